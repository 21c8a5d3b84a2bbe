# The meshgate image: one static binary that is the init container
# ("meshgate init": the iptables rules) and the sidecar ("meshgate proxy").
#
# Build it from the repository's top level after "make build" (or just run
# "make image", which does both):
#
#   podman build -t meshgate:latest .      # or: docker build -t meshgate:latest .
#
# The first stage installs iptables from Debian; the image itself holds
# only what the init step runs (iptables, ip6tables, both backends, and the
# libraries they load) and the meshgate binary, nothing else: no shell, no
# package manager. The sidecar runs as UID 1337, the UID the capture rules
# exempt; the init container overrides it with runAsUser: 0 and NET_ADMIN.

ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BASE} AS iptables
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ca-certificates; \
    mkdir -p /rootfs/etc /rootfs/run /rootfs/tmp /rootfs/etc/ssl/certs; \
    chmod 1777 /rootfs/tmp; \
    # merged /usr: the top-level directories are links, as on Debian
    for d in bin sbin lib lib64; do ln -s usr/$d /rootfs/$d; done; \
    # every file of iptables and of the libraries it loads (dpkg knows
    # them), but documentation and glibc's character set converters
    pkgs="iptables libc6 libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0"; \
    for p in $pkgs; do dpkg -L "$p"; done | sort -u | while read -r f; do \
        [ -f "$f" ] || [ -L "$f" ] || continue; \
        case "$f" in /usr/share/*|*/gconv/*) continue;; esac; \
        real="$(readlink -f "$(dirname "$f")")/$(basename "$f")"; \
        mkdir -p "/rootfs$(dirname "$real")"; \
        cp -a "$real" "/rootfs$real"; \
    done; \
    # "iptables" and friends are update-alternatives links
    mkdir -p /rootfs/etc/alternatives; \
    cp -a /etc/alternatives/ip*tables* /rootfs/etc/alternatives/; \
    cp -a /usr/sbin/ip*tables* /rootfs/usr/sbin/; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    cp /etc/protocols /etc/services /rootfs/etc/ 2>/dev/null || true; \
    printf 'root:x:0:0:root:/:/usr/sbin/nologin\nmeshgate:x:1337:1337:meshgate:/:/usr/sbin/nologin\n' > /rootfs/etc/passwd; \
    printf 'root:x:0:\nmeshgate:x:1337:\n' > /rootfs/etc/group; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*

FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="meshgate" \
      org.opencontainers.image.description="meshgate: the init step and the sidecar of a transparent mTLS service mesh" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=iptables /rootfs/ /
COPY bin/meshgate /usr/local/bin/meshgate
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshgate"]
CMD ["proxy"]
