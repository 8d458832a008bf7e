#!/usr/bin/env bash
# make-kubeconfig.sh: writes a kubeconfig for kube-event's own ServiceAccount, which may only
# get/list/watch Events, so that kube-event outside the cluster (systemd, start.sh) need not
# use admin.conf.
#
#   kubectl apply -f deploy/rbac.yaml            # once: the ServiceAccount and its rights
#   scripts/make-kubeconfig.sh [--secret] [OUTPUT]
#
# OUTPUT defaults to ./kube-event.kubeconfig; it is written with mode 0600. The API server
# address and CA come from kubectl's current context (`kubectl config view --raw --minify`),
# so run this where kubectl talks to the cluster as an admin (e.g. on a control-plane node
# with KUBECONFIG=/etc/kubernetes/admin.conf).
#
# The token:
# - by default a bound token from the TokenRequest API (`kubectl create token`), asked for
#   one year (8760h). The API server may cap it: --service-account-max-token-expiration, if
#   set, is the longest it hands out. The expiry actually granted is printed: run this again
#   before then, and restart kube-event.
# - with --secret, a Secret of type kubernetes.io/service-account-token (kube-event-token in
#   namespace kube-event), whose token never expires and stays valid until the Secret is
#   deleted: no renewal, but also nothing that limits a leaked copy.
set -euo pipefail

NS=kube-event
SA=kube-event
SECRET=kube-event-token
DURATION=8760h

usage() {
  echo "usage: $0 [--secret] [OUTPUT]   (OUTPUT defaults to ./kube-event.kubeconfig)" >&2
  exit 2
}
die() {
  echo "make-kubeconfig.sh: $*" >&2
  exit 1
}

use_secret=false
out=""
while (($#)); do
  case $1 in
    --secret) use_secret=true ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [[ -z $out ]] || usage; out=$1 ;;
  esac
  shift
done
out="${out:-./kube-event.kubeconfig}"

command -v kubectl >/dev/null 2>&1 || die "kubectl not found: run this where kubectl can reach the cluster as an admin"

if ! kubectl get serviceaccount "$SA" -n "$NS" >/dev/null 2>&1 \
  || ! kubectl get clusterrolebinding kube-event >/dev/null 2>&1; then
  die "ServiceAccount $NS/$SA or ClusterRoleBinding kube-event not found (or the cluster is not reachable: check 'kubectl get ns'); create them with: kubectl apply -f deploy/rbac.yaml"
fi

# --- The cluster: server and CA of the current context --------------------------------------
view() { kubectl config view --raw --minify -o "jsonpath=$1"; }
cluster_name="$(view '{.clusters[0].name}')"
server="$(view '{.clusters[0].cluster.server}')"
ca_data="$(view '{.clusters[0].cluster.certificate-authority-data}')"
ca_file="$(view '{.clusters[0].cluster.certificate-authority}')"
insecure="$(view '{.clusters[0].cluster.insecure-skip-tls-verify}')"
[[ -n $server ]] || die "the current kubectl context has no cluster server (kubectl config view --minify)"
if [[ -z $ca_data && -n $ca_file ]]; then
  [[ -r $ca_file ]] || die "cannot read the cluster's CA file $ca_file"
  ca_data="$(base64 -w0 "$ca_file")"
fi
if [[ -z $ca_data && $insecure != true ]]; then
  echo "make-kubeconfig.sh: note: the current context has no CA; kube-event will verify $server against its built-in public roots" >&2
fi

# --- The token -------------------------------------------------------------------------------
if $use_secret; then
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $SECRET
  namespace: $NS
  annotations:
    kubernetes.io/service-account.name: $SA
type: kubernetes.io/service-account-token
YAML
  # The token controller fills the Secret in shortly after it is created.
  token=""
  deadline=$((SECONDS + 30))
  while :; do
    token="$(kubectl get secret "$SECRET" -n "$NS" -o 'jsonpath={.data.token}' | base64 -d)"
    [[ -z $token ]] || break
    ((SECONDS < deadline)) || die "Secret $NS/$SECRET has no token after 30 s (is the token controller running?)"
    sleep 0.5
  done
  source="Secret $NS/$SECRET (does not expire; delete the Secret to revoke it)"
else
  token="$(kubectl create token "$SA" -n "$NS" --duration="$DURATION")" \
    || die "kubectl create token failed (kubectl 1.24 or later and a 1.22+ cluster are needed; or use --secret)"
  source="TokenRequest for $DURATION"
  # The expiry the server granted, from the token's "exp" claim.
  payload="$(printf '%s' "$token" | cut -d. -f2 | tr '_-' '/+')"
  while ((${#payload} % 4)); do payload="$payload="; done
  exp="$(printf '%s' "$payload" | base64 -d 2>/dev/null | sed -nE 's/.*"exp":([0-9]+).*/\1/p')" || true
  if [[ -n $exp ]]; then
    source="$source, expires $(date -u -d "@$exp" '+%Y-%m-%d %H:%M UTC')"
  fi
fi
[[ -n $token ]] || die "got an empty token"

# --- The kubeconfig --------------------------------------------------------------------------
# Names are single-quoted YAML scalars ('' is a quote); server, CA and token are plain scalars.
q() { printf "'%s'" "${1//\'/\'\'}"; }
cluster_name="${cluster_name:-kubernetes}"
umask 077
{
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  echo "- name: $(q "$cluster_name")"
  echo "  cluster:"
  echo "    server: $(q "$server")"
  if [[ -n $ca_data ]]; then
    echo "    certificate-authority-data: $ca_data"
  elif [[ $insecure == true ]]; then
    echo "    insecure-skip-tls-verify: true"
  fi
  echo "users:"
  echo "- name: kube-event"
  echo "  user:"
  echo "    token: $(q "$token")"
  echo "contexts:"
  echo "- name: kube-event"
  echo "  context:"
  echo "    cluster: $(q "$cluster_name")"
  echo "    user: kube-event"
  echo "current-context: kube-event"
} >"$out.tmp.$$" || die "cannot write $out"
chmod 0600 "$out.tmp.$$"
mv "$out.tmp.$$" "$out"

path="$(readlink -f "$out")"
echo "wrote $path (mode 0600): ServiceAccount $NS/$SA on $server"
echo "token: $source"
echo
echo "Put this in kube-event.conf:"
echo "  KUBECONFIG=$path"
