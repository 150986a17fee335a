{{- define "berth.name" -}}berth{{- end -}}

{{- define "berth.fullname" -}}
{{- if contains "berth" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-berth" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "berth.labels" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "berth.selector" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: installer
{{- end -}}

{{- define "berth.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Chart-level checks the schema cannot express. */}}
{{- define "berth.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes the metrics Service" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (hasKey (.Values.config.metrics | default dict) "address") -}}
{{- fail "config.metrics.address and metrics.enabled exclude each other: with metrics.enabled berth listens on each node's address at metrics.port" -}}
{{- end -}}
{{- end -}}

{{/*
A TOML value from a values value. Helm reads every YAML number as a float; berth's integer keys get integers
(a float with a fraction is refused by values.schema.json before this runs). Strings use JSON's escapes, which
are TOML's basic-string escapes.
*/}}
{{- define "berth.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}{{ int64 $v }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "berth.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{{- if eq (len $v) 0 -}}{}{{- else -}}{ {{ range $i, $k := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ toJson $k }} = {{ include "berth.tomlValue" (index $v $k) }}{{ end }} }{{- end -}}
{{- else -}}{{ fail (printf "config: no TOML form for a %s" (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/*
berth's config.toml. [metrics] comes last: with metrics.enabled its address is the loopback placeholder that the
installer replaces, on each node, with that node's address (status.hostIP).
*/}}
{{- define "berth.configToml" -}}
# berth's configuration, written by the berth Helm chart (release {{ .Release.Name }}); edits are overwritten.
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- if .Values.metrics.enabled -}}
{{- $_ := set $config "metrics" (dict "address" (printf "127.0.0.1:%d" (int .Values.metrics.port))) -}}
{{- end -}}
{{- range $section := without (keys $config | sortAlpha) "metrics" }}
[{{ $section }}]
{{- range $key, $value := index $config $section }}
{{ $key }} = {{ include "berth.tomlValue" $value }}
{{- end }}
{{- end }}
{{- if hasKey $config "metrics" }}
[metrics]
{{- range $key, $value := $config.metrics }}
{{ $key }} = {{ include "berth.tomlValue" $value }}
{{- end }}
{{- end }}
{{ end -}}

{{/*
A pre-delete hook Job of the cleanup: one kubectl step of the entrypoint (args), with the cleanup's ServiceAccount.
An eviction (a drain of the node it runs on, which the switch back does) is not a failure of the step: the Job
starts another pod rather than counting it against backoffLimit.
*/}}
{{- define "berth.hookJob" -}}
{{- $root := .root -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "berth.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    helm.sh/hook: pre-delete
    helm.sh/hook-weight: {{ .weight | quote }}
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: 2
  activeDeadlineSeconds: {{ $root.Values.cleanup.timeoutSeconds | int }}
  podFailurePolicy:
    rules:
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
  template:
    metadata:
      labels:
        {{- include "berth.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      restartPolicy: Never
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      nodeSelector:
        {{- toYaml $root.Values.nodeSelector | nindent 8 }}
      tolerations:
        {{- toYaml $root.Values.tolerations | nindent 8 }}
      containers:
        - name: {{ index .args 0 }}
          image: {{ include "berth.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            - name: POD_NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
            # kubectl's discovery cache, on the only writable path.
            - name: HOME
              value: /tmp
          volumeMounts:
            - name: tmp
              mountPath: /tmp
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          resources:
            {{- toYaml $root.Values.resources | nindent 12 }}
      volumes:
        - name: tmp
          emptyDir: {}
{{- end }}
