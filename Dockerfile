# One image, two roles: the gateway or the agent.
#   docker build -t edgemart .
#   docker run --rm -v gw:/data -p 8080:8080 edgemart gateway run \
#       --broker mqtt://broker:1883 --data-dir /data --http-port 8080 --http-host 0.0.0.0
#   docker run --rm -v dev:/data -v gw:/trust:ro edgemart agent run --profile tv \
#       --device-id tv-0001 --broker mqtt://broker:1883 --data-dir /data --api-port 8731 \
#       --trust /trust/trust.json
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY mqttlink mqttlink
COPY daemonkit daemonkit
COPY agent agent
COPY cloud_gateway cloud_gateway
COPY models models
COPY firmware_profiles firmware_profiles
COPY simulators simulators
COPY bench bench
COPY edgemart edgemart
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /home/edgemart edgemart \
    && mkdir /data && chown edgemart /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER edgemart
VOLUME ["/data"]
ENTRYPOINT ["edgemart"]
CMD ["--help"]
