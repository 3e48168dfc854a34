# tollgate container image: the gateway binary, the WASM plugins built from source, and the
# demo policy directory. Multi-stage: the toolchain stays in the build stage; the runtime stage
# is Debian slim with a non-root user.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 tollgate                      # the demo policy directory
#   docker run --rm -p 8080:8080 -v $PWD/my-policies:/etc/tollgate/policies:ro \
#       -e TOLLGATE_DATABASE=postgres://tollgate@db/tollgate tollgate
#
# docs/deploy.md has a two-replica example behind nginx with PostgreSQL.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
# Cache mounts keep the registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/build-plugins \
    && cargo build --release --locked -p tollgate \
    && cp target/release/tollgate /usr/local/bin/tollgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tollgate --create-home tollgate
COPY --from=build /usr/local/bin/tollgate /usr/local/bin/tollgate
# The demo policy directory and the plugins it loads (its manifests name ../plugins/dist).
COPY --from=build /src/policies /etc/tollgate/policies
COPY --from=build /src/plugins/dist /etc/tollgate/plugins/dist
USER tollgate
WORKDIR /var/lib/tollgate
ENV TOLLGATE_POLICIES=/etc/tollgate/policies \
    TOLLGATE_DATA_DIR=/var/lib/tollgate \
    TOLLGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["tollgate"]
CMD ["serve"]
