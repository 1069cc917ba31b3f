# Build offline from .sqlx/ (no database needed), run as a non-root user in a small image.
# The image has no PostgreSQL server: give it DATABASE_URL (docker-compose.yml does).
FROM rust:1-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY .sqlx .sqlx
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin upsertd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/upsertd --create-home upsertd
COPY --from=build /src/target/release/upsertd /usr/local/bin/upsertd
USER upsertd
# A container is reached from outside its loopback: API_TOKENS must be set (or, knowingly,
# ALLOW_UNAUTHENTICATED=true), else upsertd refuses to start with exit status 2.
ENV BIND=0.0.0.0:8080 DATA_DIR=/var/lib/upsertd RUST_LOG=info
VOLUME /var/lib/upsertd
EXPOSE 8080
HEALTHCHECK CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["upsertd"]
CMD ["serve"]
