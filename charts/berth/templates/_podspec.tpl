{{/*
The pod both DaemonSets run: the installer (mode install) and the pre-delete cleanup (mode uninstall).
Arguments: dict "root" $ "mode" "install"|"uninstall" "serviceAccount" NAME "automountToken" BOOL.
*/}}
{{- define "berth.podSpec" -}}
{{- $ := .root -}}
{{- $v := $.Values -}}
{{- $hostNetwork := and $v.metrics.enabled (eq .mode "install") -}}
serviceAccountName: {{ .serviceAccount }}
automountServiceAccountToken: {{ .automountToken }}
# systemctl and the kubelet switch reach the host through nsenter into PID 1's namespaces.
hostPID: true
{{- if $hostNetwork }}
# berth's /metrics listens on the node's address; with the host's network the Service's endpoints (pod IPs) are
# the node addresses berth listens on.
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
nodeSelector:
  {{- toYaml $v.nodeSelector | nindent 2 }}
tolerations:
  {{- toYaml $v.tolerations | nindent 2 }}
terminationGracePeriodSeconds: 10
containers:
  - name: {{ if eq .mode "install" }}installer{{ else }}cleanup{{ end }}
    image: {{ include "berth.image" $ }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args: [{{ .mode | quote }}]
    securityContext:
      privileged: true
      runAsUser: 0
    env:
      - name: NODE_NAME
        valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
      - name: NODE_IP
        valueFrom: {fieldRef: {fieldPath: status.hostIP}}
      - name: BERTH_HOST_ROOT
        value: /host
      - name: BERTH_CHART_CONFIG
        value: /etc/berth-chart/config.toml
      - name: BERTH_SOCKET_WAIT_SECONDS
        value: {{ $v.installer.socketWaitSeconds | int | quote }}
      - name: BERTH_METRICS_ON_NODE_IP
        value: {{ $v.metrics.enabled | quote }}
      - name: BERTH_KUBELET_SWITCH
        value: {{ $v.kubeletSwitch.enabled | quote }}
      - name: BERTH_KUBELET_CONFIG
        value: {{ $v.kubeletSwitch.kubeletConfigFile | quote }}
      - name: BERTH_KUBELET_FLAGS
        value: {{ $v.kubeletSwitch.kubeletFlagsFile | quote }}
      - name: BERTH_PREVIOUS_RUNTIME_ENDPOINT
        value: {{ $v.kubeletSwitch.previousRuntimeEndpoint | quote }}
      - name: BERTH_DRAIN_TIMEOUT_SECONDS
        value: {{ $v.kubeletSwitch.drainTimeoutSeconds | int | quote }}
    readinessProbe:
      # install: berth is installed and its socket answered; uninstall: this node is clean.
      exec:
        command: [test, -f, {{ if eq .mode "install" }}/tmp/berth-ready{{ else }}/tmp/berth-cleaned{{ end }}]
      periodSeconds: 5
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    volumeMounts:
      {{- include "berth.hostMounts" . | trim | nindent 6 }}
      {{- if eq .mode "install" }}
      - name: chart-config
        mountPath: /etc/berth-chart
        readOnly: true
      {{- end }}
volumes:
  {{- include "berth.hostVolumes" . | trim | nindent 2 }}
  {{- if eq .mode "install" }}
  - name: chart-config
    configMap:
      name: {{ include "berth.fullname" $ }}-config
  {{- end }}
{{- end -}}

{{/*
What install.sh writes (/opt/berth, /usr/local/bin/berth, the unit and config under /etc, /etc/crictl.yaml), the
installer's own state on the host. Not /run/berth: it holds the bind mounts pinning pods' namespaces, which a
copy in this pod's mount namespace would keep alive; the socket is reached as /proc/1/root/run/berth/berth.sock. /opt and /usr/local/bin whole:
install.sh may replace /opt/berth by a rename. kubelet's files are rewritten by the host-side step (systemd-run
through nsenter), not through a mount. Nothing else of the host is mounted.
*/}}
{{- define "berth.hostPaths" -}}
{{- $paths := list (list "host-opt" "/opt" "DirectoryOrCreate") (list "host-usr-local-bin" "/usr/local/bin" "DirectoryOrCreate") (list "host-etc" "/etc" "Directory") (list "host-installer-state" "/var/lib/berth-installer" "DirectoryOrCreate") -}}
{{- toJson $paths -}}
{{- end -}}

{{- define "berth.hostMounts" -}}
{{- range $p := include "berth.hostPaths" . | fromJsonArray }}
- name: {{ index $p 0 }}
  mountPath: /host{{ index $p 1 }}
{{- end }}
{{- end -}}

{{- define "berth.hostVolumes" -}}
{{- range $p := include "berth.hostPaths" . | fromJsonArray }}
- name: {{ index $p 0 }}
  hostPath:
    path: {{ index $p 1 }}
    type: {{ index $p 2 }}
{{- end }}
{{- end -}}
