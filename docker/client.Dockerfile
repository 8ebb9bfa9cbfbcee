# syntax=docker/dockerfile:1
#
# The Python example client (examples/python) in a container, for
# docker/compose.yaml. Debian's own grpcio / protobuf / protoc packages; the
# stubs are generated from proto/ when the client starts.

ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /client
COPY proto ./proto
COPY examples/python ./examples/python
RUN useradd -m -u 1000 client && chown -R client /client/examples/python
USER client
ENTRYPOINT ["/usr/bin/python3", "examples/python/driver.py"]
CMD ["--addr", "127.0.0.1:50051"]
