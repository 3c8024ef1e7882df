{{/*
Names, labels and small pieces shared by the templates.
*/}}

{{- define "virtflow-scheduler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the release name when it already contains the chart name, so that a
release called virtflow-scheduler gives objects called virtflow-scheduler.
*/}}
{{- define "virtflow-scheduler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "virtflow-scheduler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "virtflow-scheduler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "virtflow-scheduler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "virtflow-scheduler.labels" -}}
helm.sh/chart: {{ include "virtflow-scheduler.chart" . }}
{{ include "virtflow-scheduler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: virtflow-scheduler
{{- end -}}

{{- define "virtflow-scheduler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "virtflow-scheduler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "virtflow-scheduler.secretName" -}}
{{- default (include "virtflow-scheduler.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "virtflow-scheduler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
config.yaml as mounted into the pods. The strategy comes first so that
`kubectl edit configmap` shows it at the top; everything else is .Values.config.
*/}}
{{- define "virtflow-scheduler.configYaml" -}}
# Mounted at /etc/virtflow-scheduler/config.yaml (SCHEDULER_CONFIG).
# `strategy` is applied live by every worker within seconds of the kubelet
# updating this file; any other change needs a rollout (`helm upgrade` does
# one; with `kubectl edit` run `kubectl rollout restart deployment/{{ include "virtflow-scheduler.fullname" . }}`).
strategy: {{ .Values.strategy }}
{{ toYaml .Values.config }}
{{- end -}}

{{/*
Hardened security contexts: fixed here, not in values, so that no values file
can weaken them by accident.
*/}}
{{- define "virtflow-scheduler.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "virtflow-scheduler.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Refusals that a JSON schema cannot word clearly.
*/}}
{{- define "virtflow-scheduler.validate" -}}
{{- range .Values.extraEnv -}}
{{- if eq (toString .name) "SCHEDULING_STRATEGY" -}}
{{- fail "extraEnv must not set SCHEDULING_STRATEGY: an environment value shadows config.yaml and stops live strategy switching; set the `strategy` value instead" -}}
{{- end -}}
{{- end -}}
{{- $e := .Values.config.election -}}
{{- if not (lt (float64 $e.renew_deadline) (float64 $e.lease_duration)) -}}
{{- fail (printf "config.election.renew_deadline (%v) must be less than config.election.lease_duration (%v)" $e.renew_deadline $e.lease_duration) -}}
{{- end -}}
{{- if not (lt (float64 $e.retry_period) (float64 $e.renew_deadline)) -}}
{{- fail (printf "config.election.retry_period (%v) must be less than config.election.renew_deadline (%v)" $e.retry_period $e.renew_deadline) -}}
{{- end -}}
{{- /* The worker's other cross-key rules (scheduler/config.py), so that helm refuses what every pod would refuse at start (a crash loop). */ -}}
{{- $r := .Values.config.retry | default dict -}}
{{- if lt (float64 (dig "max_backoff" 60 $r)) (float64 (dig "initial_backoff" 1 $r)) -}}
{{- fail (printf "config.retry.max_backoff (%v) must be >= config.retry.initial_backoff (%v)" (dig "max_backoff" 60 $r) (dig "initial_backoff" 1 $r)) -}}
{{- end -}}
{{- $n := .Values.config.nodes | default dict -}}
{{- if lt (float64 (dig "offline_after" 20 $n)) (float64 (dig "suspicious_after" 10 $n)) -}}
{{- fail (printf "config.nodes.offline_after (%v) must be >= config.nodes.suspicious_after (%v)" (dig "offline_after" 20 $n) (dig "suspicious_after" 10 $n)) -}}
{{- end -}}
{{- $w := .Values.config.strategy_weights | default dict -}}
{{- if and (eq (float64 (dig "cpu" 0.4 $w)) 0.0) (eq (float64 (dig "memory" 0.4 $w)) 0.0) (eq (float64 (dig "disk" 0.2 $w)) 0.0) -}}
{{- fail "config.strategy_weights: at least one weight must be positive" -}}
{{- end -}}
{{- if eq (toString $e.backend) "none" -}}
{{- fail "config.election.backend=none makes every pod the leader (a fixed epoch, no lease): replicaCount pods, and a second pod during every rolling update, would all consume and place at once; use kubernetes (or database)" -}}
{{- end -}}
{{- $loopback := list "127.0.0.1" "localhost" "::1" -}}
{{- if or (has (toString .Values.config.http.metrics_host) $loopback) (hasPrefix "127." (toString .Values.config.http.metrics_host)) -}}
{{- fail (printf "config.http.metrics_host=%v listens on loopback only: the kubelet probes the pod IP, so every probe would fail and every pod restart; use 0.0.0.0 (the NetworkPolicy limits who reaches it)" .Values.config.http.metrics_host) -}}
{{- end -}}
{{- if not .Values.existingSecret -}}
{{- $missing := list -}}
{{- if not .Values.secrets.amqpUrl -}}{{- $missing = append $missing "secrets.amqpUrl" -}}{{- end -}}
{{- if not .Values.secrets.databaseUrl -}}{{- $missing = append $missing "secrets.databaseUrl" -}}{{- end -}}
{{- if not .Values.secrets.apiTokens -}}{{- $missing = append $missing "secrets.apiTokens" -}}{{- end -}}
{{- if and (not .Values.secrets.webhookSecret) (not (dig "webhooks" "allow_unsigned" false .Values.config)) -}}
{{- $missing = append $missing "secrets.webhookSecret (or config.webhooks.allow_unsigned=true)" -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "no default passwords: set %s, or existingSecret naming a Secret with the keys %s, %s, %s and %s" (join ", " $missing) .Values.secretKeys.amqpUrl .Values.secretKeys.databaseUrl .Values.secretKeys.apiTokens .Values.secretKeys.webhookSecret) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.config.http.port) (int .Values.config.http.metrics_port) -}}
{{- fail (printf "config.http.metrics_port (%v) must differ from config.http.port: it serves no API route" .Values.config.http.metrics_port) -}}
{{- end -}}
{{- end -}}
