#!/usr/bin/env bash
# Renders every overlay offline and checks what operators rely on.
set -euo pipefail
cd "$(dirname "$0")"
fail() { echo "k8s: $*" >&2; exit 1; }
for overlay in dev prod; do
  out=$(kubectl kustomize "overlays/$overlay") || fail "$overlay does not render"
  for kind in Deployment Service ServiceAccount ConfigMap PodDisruptionBudget NetworkPolicy Job; do
    grep -q "^kind: $kind$" <<<"$out" || fail "$overlay has no $kind"
  done
  grep -q "readOnlyRootFilesystem: true" <<<"$out" || fail "$overlay: root filesystem not read-only"
  grep -q "runAsNonRoot: true" <<<"$out" || fail "$overlay: may run as root"
  grep -q "grpc:" <<<"$out" || fail "$overlay: no native gRPC probes"
  grep -q -- "- --migrate" <<<"$out" || fail "$overlay: no migration job"
  for svc in partners scheduling; do
    grep -q "name: $svc$" <<<"$out" || fail "$overlay: no $svc Deployment/Service"
    grep -q "name: $svc-migrate$" <<<"$out" || fail "$overlay: no $svc migration Job"
    # Each Deployment's pods wait for that Job before starting their service.
    [ "$(grep -c -- "- --wait-for-migrations" <<<"$out")" -ge 2 ] ||
      fail "$overlay: a Deployment does not wait for its migration Job"
    # Token keys come from a mounted file, so a rotation needs no restart.
    [ "$(grep -c "value: /etc/connecting/auth/jwt-key" <<<"$out")" -ge 2 ] ||
      fail "$overlay: a Deployment does not read its token keys from the mounted Secret"
    ! grep -q "name: AUTH_JWT_KEY$" <<<"$out" ||
      fail "$overlay: AUTH_JWT_KEY as an environment variable cannot rotate"
  done
done
dev=$(kubectl kustomize overlays/dev)
grep -q "^kind: StatefulSet$" <<<"$dev" || fail "dev has no StatefulSets"
grep -q "jetstream" <<<"$dev" || fail "dev NATS without JetStream"
prod=$(kubectl kustomize overlays/prod)
grep -q "^kind: HorizontalPodAutoscaler$" <<<"$prod" || fail "prod has no HPA"
! grep -q "^kind: StatefulSet$" <<<"$prod" || fail "prod must use external PostgreSQL/NATS"
grep -q "^kind: Secret$" <<<"$prod" && fail "prod must not carry secrets"
for svc in partners scheduling; do
  jobs=$(kubectl kustomize "jobs/$svc-republish") || fail "the $svc republish job does not render"
  grep -q -- "- --republish" <<<"$jobs" || fail "no $svc republish job"
  grep -q "image: connecting/$svc:" <<<"$jobs" || fail "the $svc republish job runs another image"
  grep -q "readOnlyRootFilesystem: true" <<<"$jobs" || fail "jobs: root filesystem not read-only"
  grep -q "name: NATS_URL" <<<"$jobs" || fail "the $svc republish job has no NATS_URL (--after-restore needs it)"
done
monitoring=$(kubectl kustomize monitoring) || fail "monitoring does not render"
grep -q "^kind: PrometheusRule$" <<<"$monitoring" || fail "monitoring has no PrometheusRule"
grep -q "^kind: PodMonitor$" <<<"$monitoring" || fail "monitoring has no PodMonitor"
grep -q "^kind: AlertmanagerConfig$" <<<"$monitoring" || fail "monitoring has no AlertmanagerConfig"
grep -q '^    grafana_dashboard: "1"$' <<<"$monitoring" || fail "monitoring has no dashboard ConfigMap"
grep -q '"uid": "connecting-services"' <<<"$monitoring" || fail "the dashboard ConfigMap lacks dashboard.json"
# Every severity the rules raise has somewhere to go: critical its own route,
# anything else the default receiver, which must be warning's.
for sev in $(grep -o 'severity: [a-z]*' monitoring/prometheusrule.yaml | awk '{print $2}' | sort -u); do
  case $sev in
    critical) grep -q 'value: critical' monitoring/alertmanagerconfig.yaml || fail "no route for critical" ;;
    warning) grep -q '^    receiver: warning$' monitoring/alertmanagerconfig.yaml || fail "warnings go nowhere" ;;
    *) fail "alerts of severity $sev have no receiver" ;;
  esac
done
# The grpc-tls component on prod: TLS files mounted, probes on the health-only port.
tls_dir=$(mktemp -d "$PWD/.grpc-tls-check.XXXXXX")
trap 'rm -rf "$tls_dir"' EXIT
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../overlays/prod]\ncomponents: [../components/grpc-tls]\n' \
  >"$tls_dir/kustomization.yaml"
tls=$(kubectl kustomize "$tls_dir") || fail "prod with components/grpc-tls does not render"
[ "$(grep -c "value: /etc/connecting/grpc-tls/tls.crt" <<<"$tls")" -eq 2 ] ||
  fail "grpc-tls: a Deployment has no TLS certificate"
[ "$(grep -c "port: 50052" <<<"$tls")" -ge 8 ] ||
  fail "grpc-tls: the probes do not all ask the health-only port"
grep -q "secretName: scheduling-grpc-tls" <<<"$tls" || fail "grpc-tls: no certificate Secret"
[ "$(grep -c "name: auth$" <<<"$tls")" -ge 2 ] || fail "grpc-tls: the token key volume was lost"
echo "k8s: dev and prod overlays, jobs and monitoring render and pass checks"
