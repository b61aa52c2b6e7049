# pgsplit: the same binary as `cargo build --release`, run as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin pgsplit

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /nonexistent pgsplit
COPY --from=build /src/target/release/pgsplit /usr/local/bin/pgsplit
USER pgsplit
EXPOSE 6432 9930
ENTRYPOINT ["/usr/local/bin/pgsplit"]
CMD ["run", "-c", "/etc/pgsplit/proxy.yaml"]
