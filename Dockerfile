# The kube-event image: the static musl binary and nothing else (no shell, no libc, no CA
# bundle: kube-event carries the public roots for Loki and reads the cluster's CA from its
# ServiceAccount).
#
#   scripts/dist.sh                      # builds target/x86_64-unknown-linux-musl/release/kube-event
#   docker build -t kube-event:0.1.0 .
#   docker tag kube-event:0.1.0 registry.example.com/kube-event:0.1.0 && docker push ...
#
# Another binary: docker build --build-arg BINARY=path/inside/context -t ... (and let it
# through .dockerignore, which sends the daemon only the musl binary).
FROM scratch
ARG BINARY=target/x86_64-unknown-linux-musl/release/kube-event
COPY ${BINARY} /kube-event
# Not root: the uid/gid deploy/kube-event.yaml runs it as.
USER 65532:65532
ENTRYPOINT ["/kube-event"]
