# netbox-outbox as a container image: one statically linked binary (musl), the CA bundle for
# webhooks' TLS, nothing else: no shell, no package manager, runs as an unprivileged uid.
#
#   docker build -t netbox-outbox .            # or: podman build -t netbox-outbox .
#   docker run --rm -e DATABASE_URL=postgres://netbox_outbox:...@db/netbox netbox-outbox check
#
# The image's command is `run`; any other subcommand (migrate, check, status, replay,
# test-webhook) is given as the container's arguments. Configuration is by environment
# (NETBOX_OUTBOX_<SECTION>__<KEY>, DATABASE_URL), or a file mounted and named by --config.
# docs/container.md has the compose override for netbox-docker.
#
# BINARY_FROM=prebuilt takes the binary from .container/ (tests/container/run puts a musl build
# there) instead of building it in rust:alpine, for machines without access to Docker Hub.
ARG BINARY_FROM=build

# 1.92: the oldest Rust the locked crates accept (refinery 0.10 declares rust-version 1.92);
# Cargo.toml's rust-version and docs/install.md say the same.
FROM docker.io/library/rust:1.92-alpine AS build
# aws-lc-sys (rustls' crypto) compiles AWS-LC's C sources with the cc crate: on x86_64 and
# aarch64 musl it ships pregenerated bindings, so a C compiler and musl's headers suffice
# (no cmake, clang, perl or go). gcc is named although rust:alpine has it today, so the build
# does not depend on what the base image happens to carry.
RUN apk add --no-cache musl-dev gcc ca-certificates
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin netbox-outbox \
    && mkdir /out \
    && cp target/release/netbox-outbox /out/ \
    && cp /etc/ssl/certs/ca-certificates.crt /out/

FROM scratch AS prebuilt
COPY .container/ /out/

FROM ${BINARY_FROM} AS binary

FROM scratch
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/netbox-outbox /usr/local/bin/netbox-outbox
# nobody:nogroup of most distributions; owns nothing in the image
USER 65534:65534
# metrics, /healthz and /readyz; inside a container the default 127.0.0.1 would be unreachable
ENV NETBOX_OUTBOX_METRICS__LISTEN=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/netbox-outbox"]
CMD ["run"]
