# Builds sessiond (store node and balancer) and the cart example app.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sessiond \
 && cargo build --release --locked -p sessiond-client --features tower-sessions --example cart

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sessiond /usr/local/bin/sessiond
COPY --from=build /src/target/release/examples/cart /usr/local/bin/cart
USER nobody
EXPOSE 7700 7701 3000 8080 8081
CMD ["sessiond", "serve", "--http", "0.0.0.0:7700", "--tcp", "0.0.0.0:7701"]
