# The lmx broker in a container: a static binary in an empty image, run as a
# user that is not root, its Unix socket in a volume that other containers
# can mount. Build it from the top of the repository:
#
#   docker build -t lmx .
#   docker run -d --name lmx -v lmx-run:/run/lmx -p 127.0.0.1:6971:6971 -e LMX_BROKER_TOKEN=... lmx
#
# Every LMX_BROKER_* variable sets the flag of lmx start of the same name.
FROM golang:1.26 AS build
WORKDIR /src
COPY . .
RUN cd cmd/lmx \
 && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/usr/local/bin/lmx . \
 && mkdir -p /out/run/lmx

FROM scratch
COPY --from=build /out/usr/local/bin/lmx /usr/local/bin/lmx
COPY --from=build --chown=65532:65532 /out/run/lmx /run/lmx
USER 65532:65532
# The socket (0660: the broker's group may connect too) and TCP for other
# hosts; metrics and /healthz on 6972. XDG_RUNTIME_DIR makes the socket the
# default of 'docker exec lmx lmx ls'.
ENV XDG_RUNTIME_DIR=/run/lmx \
    LMX_BROKER_LISTEN=unix:///run/lmx/lmx.sock,tcp://0.0.0.0:6971 \
    LMX_BROKER_METRICS=0.0.0.0:6972 \
    LMX_BROKER_SOCKET_MODE=0660 \
    LMX_BROKER_LOG_FORMAT=json
VOLUME /run/lmx
EXPOSE 6971 6972
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/usr/local/bin/lmx", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lmx"]
CMD ["start"]
