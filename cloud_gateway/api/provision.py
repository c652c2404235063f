"""The provisioning route: a device with its factory claim credential gets its identity."""

from __future__ import annotations

from aiohttp import web

from cloud_gateway.api.context import ctx, json_response, read_body
from cloud_gateway.api.errors import ApiProblem
from cloud_gateway.api.routes import Route
from cloud_gateway.errors import ClaimRefused, GatewayError, InviteRefused
from cloud_gateway.provisioning.service import ProvisionIn

TAGS = ("provisioning",)


async def provision(request: web.Request) -> web.Response:
    """`Authorization: Claim <credential>` and `{"device_id", "csr", "household"?}` -> 201 the
    device's certificate, the fleet CA, the trust file, the topic root and, with a household
    invite, its signed membership or why the invite was refused; 401 an unknown or revoked
    claim, 409 a device id provisioned before or a batch used up (both audited)."""
    scheme, _, claim = request.headers.get("Authorization", "").partition(" ")
    spec = await read_body(request, ProvisionIn, "the provisioning request is invalid")
    provisioner = ctx(request).provisioner
    if scheme.lower() != "claim":
        claim = ""  # refused as an unknown claim, and counted
    try:
        issued = await provisioner.provision(claim.strip(), spec.device_id, spec.csr)
    except ClaimRefused as exc:
        status, title = (409, "Conflict") if exc.known else (401, "Unauthorized")
        raise ApiProblem(status, title, exc.reason) from exc
    answer = issued.to_json()
    if spec.household is not None:
        # the certificate is issued and its claim spent: a refused invite must not cost the
        # device its identity, so the answer says why and the device joins later
        try:
            answer["household"] = await ctx(request).households.join(spec.device_id, spec.household)
        except InviteRefused as exc:
            answer["household_refused"] = exc.reason
        except GatewayError as exc:
            answer["household_refused"] = f"the invite could not be redeemed now: {exc}"
    return json_response(answer, status=201)


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/provision",
        provision,
        "Provision a device: its claim credential and CSR for its X.509 client certificate",
        body=ProvisionIn,
        responses={
            201: "OK",
            401: "Unknown or revoked claim credential",
            409: "The device id is provisioned already, or the batch is used up",
        },
        public=True,  # authenticated by the claim credential, not a bearer token
        tags=TAGS,
    ),
)
