"""The device routes: the registry, one device, its export and erasure, the fleet at a glance."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, who
from cloud_gateway.api.routes import Route
from cloud_gateway.api.schemas import DeviceErased, DeviceExport, DeviceList, DeviceOut, Fleet
from cloud_gateway.db.devices import export_device as export_rows
from cloud_gateway.db.devices import fleet_summary
from cloud_gateway.db.devices import get_device as device_row
from cloud_gateway.db.devices import list_devices as device_rows
from cloud_gateway.errors import NotFound
from protocol.topics import DEVICE_ID_RE

TAGS = ("devices",)


async def list_devices(request: web.Request) -> web.Response:
    devices = await ctx(request).db.call(device_rows)
    return json_response({"devices": devices})


async def get_device(request: web.Request) -> web.Response:
    device_id = request.match_info["id"]
    device = await ctx(request).db.call(device_row, device_id)
    if device is None:
        raise NotFound("device", device_id)
    return json_response(device)


async def erase_device(request: web.Request) -> web.Response:
    """Erasure (DESIGN.md guarantee 4): 202 with what was removed; the device forgets next."""
    device_id = request.match_info["id"]
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise NotFound("device", device_id)
    result = await ctx(request).erasure.erase(device_id, who(request))
    if result is None:
        raise NotFound("device", device_id)
    return json_response(result, status=202)


async def export_device(request: web.Request) -> web.Response:
    device_id = request.match_info["id"]
    export = await ctx(request).db.call(export_rows, device_id)
    if export is None:
        raise NotFound("device", device_id)
    return json_response(export)


async def fleet(request: web.Request) -> web.Response:
    return json_response(await ctx(request).db.call(fleet_summary))


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/v1/devices",
        list_devices,
        "Device registry",
        responses={200: DeviceList},
        tags=TAGS,
    ),
    Route(
        "get", "/v1/devices/{id}", get_device, "One device", responses={200: DeviceOut}, tags=TAGS
    ),
    Route(
        "delete",
        "/v1/devices/{id}",
        erase_device,
        "Erase a device: delete its data here, send it a signed forget command",
        responses={202: DeviceErased},
        tags=TAGS,
        scope="devices",
    ),
    Route(
        "get",
        "/v1/devices/{id}/export",
        export_device,
        "All the gateway holds for a device",
        responses={200: DeviceExport},
        tags=TAGS,
        scope="devices",
    ),
    Route("get", "/v1/fleet", fleet, "The fleet at a glance", responses={200: Fleet}, tags=TAGS),
)
