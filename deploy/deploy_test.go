// Package deploy_test validates the deployment files in deploy/: the
// Kubernetes manifests (deploy/kubernetes), the Dockerfile and the systemd
// unit. They are parsed, not applied, and checked against each other and
// against the edge's own code: the ports and probes of the Deployment
// against the listen section of the config in its ConfigMap, the grace
// period against drain_delay + grace_timeout, every file the config names
// against the volumes that put it there, the config itself against the
// real, strict loader (proxy.ParseConfig), the Redis configuration and ACL
// against a real redis-server. So a change on one side cannot silently
// break the other.
//
// It needs no cluster and no docker. It must never accept a manifest it
// could only partly read: a missing field is a failure, not a skip.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	redisstore "github.com/ztna-dev/ztna/internal/store/redis"
	"github.com/ztna-dev/ztna/proxy"
	"github.com/ztna-dev/ztna/proxy/edge"
)

const (
	k8sDir = "kubernetes"
	// edgeDeployment is the Deployment that runs `ztna serve`.
	edgeDeployment = "ztna-edge"
	// placeholder marks every value in the example Secrets.
	placeholder = "REPLACE-ME"
	// stopMargin is the least time a grace period or stop timeout must
	// leave beyond drain_delay + grace_timeout for the process to exit.
	stopMargin = 5 * time.Second
)

// ---------------------------------------------------------------------------
// Kubernetes: loading

// object is one Kubernetes object, decoded into generic maps.
type object struct {
	file string
	m    map[string]any
}

func (o object) kind() string { return str(o.m, "kind") }
func (o object) name() string { return str(o.m, "metadata", "name") }
func (o object) String() string {
	return fmt.Sprintf("%s/%s (%s)", o.kind(), o.name(), o.file)
}

// cluster is every object that `kubectl apply -k deploy/kubernetes` creates.
type cluster struct{ objs []object }

// loadCluster reads kustomization.yaml and every resource it lists.
func loadCluster(t *testing.T) *cluster {
	t.Helper()
	var kust map[string]any
	data, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if str(kust, "kind") != "Kustomization" {
		t.Fatalf("kustomization.yaml: kind %q, want Kustomization", str(kust, "kind"))
	}
	if _, ok := kust["namespace"]; ok {
		t.Errorf("kustomization.yaml sets namespace: the manifests must stay namespace-agnostic (use -n or an overlay)")
	}
	c := &cluster{}
	for _, r := range list(kust, "resources") {
		file, _ := r.(string)
		if file == "" || strings.Contains(file, "://") || strings.Contains(file, "..") {
			t.Fatalf("kustomization.yaml: resource %v: want a file in %s", r, k8sDir)
		}
		c.objs = append(c.objs, decodeAll(t, filepath.Join(k8sDir, file))...)
	}
	if len(c.objs) == 0 {
		t.Fatal("kustomization.yaml lists no resources")
	}
	return c
}

// decodeAll decodes every document of a multi-document YAML file.
func decodeAll(t *testing.T, file string) []object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []object
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if m == nil {
			continue // an empty document
		}
		o := object{file: file, m: m}
		if o.kind() == "" || o.name() == "" || str(m, "apiVersion") == "" {
			t.Fatalf("%s: a document without apiVersion, kind or metadata.name", file)
		}
		out = append(out, o)
	}
	return out
}

// get returns the object of kind and name, failing the test without it.
func (c *cluster) get(t *testing.T, kind, name string) object {
	t.Helper()
	if o, ok := c.find(kind, name); ok {
		return o
	}
	t.Fatalf("no %s %q in the manifests", kind, name)
	return object{}
}

func (c *cluster) find(kind, name string) (object, bool) {
	for _, o := range c.objs {
		if o.kind() == kind && o.name() == name {
			return o, true
		}
	}
	return object{}, false
}

func (c *cluster) ofKind(kind string) []object {
	var out []object
	for _, o := range c.objs {
		if o.kind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// dataKey returns the value of key in a ConfigMap's or Secret's data
// (stringData for Secrets; the examples never carry base64 data).
func (c *cluster) dataKey(kind, name, key string) (string, error) {
	o, ok := c.find(kind, name)
	if !ok {
		return "", fmt.Errorf("no %s %q in the manifests", kind, name)
	}
	field := "data"
	if kind == "Secret" {
		field = "stringData"
	}
	v, ok := at(o.m, field, key).(string)
	if !ok {
		return "", fmt.Errorf("%s has no key %q", o, key)
	}
	return v, nil
}

// ---------------------------------------------------------------------------
// Kubernetes: pods, mounts, ports

// pod is the pod template of a workload and one of its containers.
type pod struct {
	owner     object
	spec      map[string]any
	container map[string]any
	claims    []any // StatefulSet volumeClaimTemplates
}

func workloadPod(t *testing.T, o object, container string) pod {
	t.Helper()
	spec := mapOf(o.m, "spec", "template", "spec")
	if spec == nil {
		t.Fatalf("%s has no pod template", o)
	}
	p := pod{owner: o, spec: spec, claims: list(o.m, "spec", "volumeClaimTemplates")}
	for _, c := range list(spec, "containers") {
		if str(c, "name") == container {
			p.container = c.(map[string]any)
		}
	}
	if p.container == nil {
		t.Fatalf("%s has no container %q", o, container)
	}
	return p
}

func (p pod) labels() map[string]any {
	return mapOf(p.owner.m, "spec", "template", "metadata", "labels")
}

// command is the container's command and args, joined.
func command(c any) []string {
	var out []string
	for _, f := range []string{"command", "args"} {
		for _, a := range list(c, f) {
			s, _ := a.(string)
			out = append(out, s)
		}
	}
	return out
}

// source is where a path inside a container comes from.
type source struct {
	volume   string
	kind     string // secret, configMap, emptyDir, claim
	name     string // the Secret, ConfigMap or claim
	key      string // the key (file) inside it; "" for the mount itself
	readOnly bool
}

// resolve finds the volume that provides path in container c of pod p.
func (p pod) resolve(c map[string]any, pth string) (source, error) {
	var mount map[string]any
	for _, m := range list(c, "volumeMounts") {
		mp := strings.TrimSuffix(str(m, "mountPath"), "/")
		if (pth == mp || strings.HasPrefix(pth, mp+"/")) && (mount == nil || len(mp) > len(str(mount, "mountPath"))) {
			mount = m.(map[string]any)
		}
	}
	if mount == nil {
		return source{}, fmt.Errorf("%s is on no volume of container %s (the root filesystem is read-only and holds no config)", pth, str(c, "name"))
	}
	if str(mount, "subPath") != "" || str(mount, "subPathExpr") != "" {
		return source{}, fmt.Errorf("%s is mounted with subPath: such mounts never see updates (config reload, certificate renewal)", pth)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(pth, strings.TrimSuffix(str(mount, "mountPath"), "/")), "/")
	s := source{volume: str(mount, "name"), key: rel, readOnly: at(mount, "readOnly") == true}
	var vol map[string]any
	for _, v := range list(p.spec, "volumes") {
		if str(v, "name") == s.volume {
			vol = v.(map[string]any)
		}
	}
	for _, v := range p.claims {
		if str(v, "metadata", "name") == s.volume {
			s.kind, s.name = "claim", s.volume
			return s, nil
		}
	}
	var items []any
	switch {
	case vol == nil:
		return source{}, fmt.Errorf("%s: volume %q is not defined", pth, s.volume)
	case at(vol, "secret") != nil:
		s.kind, s.name, items = "secret", str(vol, "secret", "secretName"), list(vol, "secret", "items")
	case at(vol, "configMap") != nil:
		s.kind, s.name, items = "configMap", str(vol, "configMap", "name"), list(vol, "configMap", "items")
	case at(vol, "emptyDir") != nil:
		s.kind = "emptyDir"
		return s, nil
	default:
		return source{}, fmt.Errorf("%s: volume %q is of a kind this test does not know", pth, s.volume)
	}
	if len(items) > 0 && rel != "" {
		found := false
		for _, it := range items {
			if str(it, "path") == rel {
				s.key, found = str(it, "key"), true
			}
		}
		if !found {
			return source{}, fmt.Errorf("%s: volume %q projects only some keys, and not %q", pth, s.volume, rel)
		}
	}
	return s, nil
}

// fileFrom resolves path to a key of a Secret or ConfigMap that exists.
func (p pod) fileFrom(c map[string]any, cl *cluster, pth string) (source, string, error) {
	s, err := p.resolve(c, pth)
	if err != nil {
		return s, "", err
	}
	kind := map[string]string{"secret": "Secret", "configMap": "ConfigMap"}[s.kind]
	if kind == "" || s.key == "" {
		return s, "", fmt.Errorf("%s comes from a %s volume, not from a Secret or ConfigMap key", pth, s.kind)
	}
	v, err := cl.dataKey(kind, s.name, s.key)
	return s, v, err
}

// containerPort resolves a port (number or name) to a container port of
// protocol proto, or -1.
func containerPort(c any, port any, proto string) int {
	for _, p := range list(c, "ports") {
		pp := "TCP"
		if s := str(p, "protocol"); s != "" {
			pp = s
		}
		n, _ := at(p, "containerPort").(int)
		if pp == proto && (port == n || port == str(p, "name")) {
			return n
		}
	}
	return -1
}

func labelsMatch(selector, labels map[string]any) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// The edge's config, as the Deployment reads it

// edgeSetup is the edge's pod and the config file it is started with.
type edgeSetup struct {
	cl         *cluster
	pod        pod
	configPath string
	configYAML string
	config     map[string]any
	listen     edge.Config // with the documented defaults filled in
}

func loadEdge(t *testing.T) edgeSetup {
	t.Helper()
	cl := loadCluster(t)
	p := workloadPod(t, cl.get(t, "Deployment", edgeDeployment), "edge")
	args := command(p.container)
	i := slices.Index(args, "--config")
	if !slices.Contains(args, "serve") || i < 0 || i+1 == len(args) {
		t.Fatalf("the edge container runs %q, want `ztna serve --config FILE`", args)
	}
	e := edgeSetup{cl: cl, pod: p, configPath: args[i+1]}
	s, data, err := p.fileFrom(p.container, cl, e.configPath)
	if err != nil {
		t.Fatalf("--config %s: %v", e.configPath, err)
	}
	if s.kind != "configMap" {
		t.Fatalf("--config %s comes from a %s, want a ConfigMap (so that changes are reloaded)", e.configPath, s.kind)
	}
	e.configYAML = data
	if err := yaml.Unmarshal([]byte(data), &e.config); err != nil {
		t.Fatalf("ConfigMap %s key %s: %v", s.name, s.key, err)
	}
	e.listen = listenSection(t, e.config)
	return e
}

// listenSection decodes the listen section strictly into the edge's own
// type and fills in the documented defaults of its zero values.
func listenSection(t *testing.T, config map[string]any) edge.Config {
	t.Helper()
	data, err := yaml.Marshal(config["listen"])
	if err != nil {
		t.Fatal(err)
	}
	var l edge.Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&l); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("listen: %v", err)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if l.Address == "" {
		l.Address = edge.DefaultAddress
	}
	if l.AdminAddress == "" {
		l.AdminAddress = edge.DefaultAdminAddress
	}
	if l.DrainDelay == 0 {
		l.DrainDelay = edge.DefaultDrainDelay
	}
	if l.GraceTimeout == 0 {
		l.GraceTimeout = edge.DefaultGraceTimeout
	}
	return l
}

func hostPort(t *testing.T, field, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", field, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n == 0 {
		t.Fatalf("%s %q: the manifests need a fixed port", field, addr)
	}
	return h, n
}

// ---------------------------------------------------------------------------
// Kubernetes: tests

func TestKustomizationListsEveryManifest(t *testing.T) {
	var kust struct {
		Resources []string `yaml:"resources"`
	}
	data, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &kust); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(kust.Resources, b) {
			t.Errorf("%s is not listed in kustomization.yaml: `kubectl apply -k` would skip it", f)
		}
	}
	for _, o := range loadCluster(t).objs {
		if ns := str(o.m, "metadata", "namespace"); ns != "" {
			t.Errorf("%s sets namespace %q: the manifests must stay namespace-agnostic", o, ns)
		}
	}
}

func TestManifestKinds(t *testing.T) {
	cl := loadCluster(t)
	e := loadEdge(t)
	for _, want := range []struct{ kind, name string }{
		{"Deployment", edgeDeployment},
		{"Service", "ztna-edge"},
		{"PodDisruptionBudget", "ztna-edge"},
		{"ConfigMap", "ztna-config"},
		{"ConfigMap", "ztna-policy"},
		{"StatefulSet", "redis"},
		{"Service", "redis"},
		{"NetworkPolicy", "redis"},
	} {
		if _, ok := cl.find(want.kind, want.name); !ok {
			t.Errorf("no %s %q", want.kind, want.name)
		}
	}
	if n := len(cl.ofKind("Secret")); n == 0 {
		t.Error("no example Secrets")
	}
	if n, _ := at(e.pod.owner.m, "spec", "replicas").(int); n != 2 {
		t.Errorf("Deployment %s has %d replicas, want 2", edgeDeployment, n)
	}
}

func TestEdgePortsAndProbes(t *testing.T) {
	e := loadEdge(t)
	c := e.pod.container
	_, port := hostPort(t, "listen.address", e.listen.Address)
	adminHost, admin := hostPort(t, "listen.admin_address", e.listen.AdminAddress)
	if ip := net.ParseIP(adminHost); adminHost == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("listen.admin_address %s is loopback: the kubelet's probes come over the pod IP", e.listen.AdminAddress)
	}
	wantPorts := []struct {
		what, proto string
		port        int
	}{
		{"listen.address (HTTPS)", "TCP", port},
		{"listen.address (HTTP/3, tunnel)", "UDP", port},
		{"listen.admin_address", "TCP", admin},
	}
	for _, w := range wantPorts {
		if containerPort(c, w.port, w.proto) != w.port {
			t.Errorf("%s is %d/%s in the config; the container declares no such port", w.what, w.port, w.proto)
		}
	}
	if e.listen.HTTP3 != nil && !*e.listen.HTTP3 {
		t.Error("listen.http3 is off, but the manifests expose UDP for it")
	}

	for _, w := range []struct{ probe, path string }{
		{"readinessProbe", "/readyz"},
		{"livenessProbe", "/healthz"},
		{"startupProbe", ""}, // optional; if present, on the admin port
	} {
		pr := mapOf(c, w.probe)
		if pr == nil {
			if w.path != "" {
				t.Errorf("no %s", w.probe)
			}
			continue
		}
		get := mapOf(pr, "httpGet")
		if get == nil {
			t.Errorf("%s is not an httpGet on the admin port", w.probe)
			continue
		}
		if p := str(get, "path"); w.path != "" && p != w.path || w.path == "" && p != "/healthz" && p != "/readyz" {
			t.Errorf("%s GETs %q, want %q", w.probe, p, w.path)
		}
		if got := containerPort(c, at(get, "port"), "TCP"); got != admin {
			t.Errorf("%s probes port %v (%d), want the admin port %d", w.probe, at(get, "port"), got, admin)
		}
		if s := str(get, "scheme"); s != "" && s != "HTTP" {
			t.Errorf("%s uses scheme %s; the admin listener is plain HTTP", w.probe, s)
		}
	}

	// Ports below 1024 as a non-root user.
	if port < 1024 {
		ok := false
		for _, s := range list(e.pod.spec, "securityContext", "sysctls") {
			if str(s, "name") == "net.ipv4.ip_unprivileged_port_start" {
				v, err := strconv.Atoi(str(s, "value"))
				ok = err == nil && v <= port
			}
		}
		if !ok {
			t.Errorf("listen.address port %d needs the pod sysctl net.ipv4.ip_unprivileged_port_start ≤ %d (a non-root process gets no NET_BIND_SERVICE)", port, port)
		}
	}
}

func TestEdgeDrainTiming(t *testing.T) {
	e := loadEdge(t)
	tg, ok := at(e.pod.spec, "terminationGracePeriodSeconds").(int)
	if !ok {
		t.Fatal("terminationGracePeriodSeconds is not set (the default 30s is shorter than a drain)")
	}
	var preStop time.Duration
	if ps := mapOf(e.pod.container, "lifecycle", "preStop"); ps != nil {
		if at(ps, "exec") != nil {
			t.Error("preStop runs a command, but the distroless image has no shell or sleep")
		}
		if s, ok := at(ps, "sleep", "seconds").(int); ok {
			preStop = time.Duration(s) * time.Second
		}
	}
	need := preStop + e.listen.DrainDelay + e.listen.GraceTimeout + stopMargin
	if got := time.Duration(tg) * time.Second; got < need {
		t.Errorf("terminationGracePeriodSeconds %s < preStop %s + drain_delay %s + grace_timeout %s + %s: the kubelet would SIGKILL requests the edge lets finish",
			got, preStop, e.listen.DrainDelay, e.listen.GraceTimeout, stopMargin)
	}
}

// edgeFile is a file or directory the edge's config names.
type edgeFile struct {
	field string // dotted path in ztna.yaml
	dir   bool
	// private files must be mode 0600 (the edge refuses such keys
	// otherwise, and warns about such a Redis password file), which a
	// Secret volume cannot give a non-root user (fsGroup makes them 0440):
	// an init container copies them into a volume the edge mounts
	// read-only, so that no replica replaces or rotates shared keys.
	private  bool
	writable bool
}

var edgeFiles = []edgeFile{
	{field: "tls.cert_file"},
	{field: "tls.key_file"},
	{field: "oidc.client_secret_file"},
	{field: "signals.token_file"},
	{field: "admin.token_file"},
	{field: "store.redis.password_file", private: true},
	{field: "devices.ca_cert_file"},
	{field: "devices.ca_key_file", private: true},
	{field: "signing.key_file", private: true},
	{field: "policy.dir", dir: true},
	{field: "data_dir", dir: true, writable: true},
}

// initCopies returns, by the volume and key of the destination, the source
// path of every file an init container copies with `install -m 0600 SRC
// DST`, and the init container that does it.
func (e edgeSetup) initCopies(t *testing.T) map[string]initCopy {
	t.Helper()
	out := map[string]initCopy{}
	installRE := regexp.MustCompile(`install\s+-m\s+0?600\s+(\S+)\s+(\S+)`)
	for _, ic := range list(e.pod.spec, "initContainers") {
		icm := ic.(map[string]any)
		for _, m := range installRE.FindAllStringSubmatch(strings.Join(command(icm), "\n"), -1) {
			dst, err := e.pod.resolve(icm, m[2])
			if err != nil || dst.kind != "emptyDir" {
				t.Errorf("init container %s copies to %s, not into an emptyDir (%v)", str(icm, "name"), m[2], err)
				continue
			}
			out[dst.volume+"/"+dst.key] = initCopy{icm, m[1]}
		}
	}
	return out
}

type initCopy struct {
	container map[string]any
	src       string
}

// content returns where path comes from in the edge container and what it
// holds: a Secret or ConfigMap key, directly or through an init copy.
func (e edgeSetup) content(t *testing.T, pth string) (source, string, error) {
	t.Helper()
	s, err := e.pod.resolve(e.pod.container, pth)
	if err != nil {
		return s, "", err
	}
	if s.kind == "emptyDir" {
		cp, ok := e.initCopies(t)[s.volume+"/"+s.key]
		if !ok {
			return s, "", fmt.Errorf("%s is on emptyDir %s, but no init container copies it there", pth, s.volume)
		}
		_, v, err := e.pod.fileFrom(cp.container, e.cl, cp.src)
		if err != nil {
			return s, "", fmt.Errorf("init container %s copies %s: %w", str(cp.container, "name"), cp.src, err)
		}
		return s, v, nil
	}
	_, v, err := e.pod.fileFrom(e.pod.container, e.cl, pth)
	return s, v, err
}

// TestEdgeFilesAreMounted checks that every file and directory the config
// names is provided by a volume of the edge container, from a Secret or
// ConfigMap key that exists.
func TestEdgeFilesAreMounted(t *testing.T) {
	e := loadEdge(t)
	for _, f := range edgeFiles {
		t.Run(f.field, func(t *testing.T) {
			pth := str(e.config, strings.Split(f.field, ".")...)
			if pth == "" {
				// Defaults live in data_dir, an emptyDir per replica: the
				// device CA and signing keys must be shared.
				t.Fatalf("%s is not set: replicas need it explicitly", f.field)
			}
			s, err := e.pod.resolve(e.pod.container, pth)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case f.dir && s.key != "":
				t.Errorf("%s %s is inside volume %s, want a volume mounted there", f.field, pth, s.volume)
			case f.writable && (s.readOnly || s.kind == "secret" || s.kind == "configMap"):
				t.Errorf("%s %s must be writable; volume %s is not", f.field, pth, s.volume)
			case f.dir && s.kind == "configMap":
				if _, ok := e.cl.find("ConfigMap", s.name); !ok {
					t.Errorf("%s: no ConfigMap %q", f.field, s.name)
				}
			case f.dir:
			case f.private && (s.kind != "emptyDir" || !s.readOnly):
				t.Errorf("%s %s comes from a %s volume (read-only: %v): want an init container's 0600 copy on an emptyDir the edge mounts read-only", f.field, pth, s.kind, s.readOnly)
			default:
				if _, _, err := e.content(t, pth); err != nil {
					t.Errorf("%s: %v", f.field, err)
				}
			}
		})
	}
	if af := str(e.config, "log", "audit_file"); af != "" {
		if s, err := e.pod.resolve(e.pod.container, af); err != nil || s.readOnly || s.kind == "secret" || s.kind == "configMap" {
			t.Errorf("log.audit_file %s is not on a writable volume (%v)", af, err)
		}
	}
}

// TestEdgeConfigLoads runs the config in the ConfigMap through the edge's
// own loader. The loader reads some of the files the config names (policy,
// the Redis password), so they are laid out under a temporary root as the
// pod sees them — Secret and ConfigMap keys, init containers' copies,
// ConfigMap directories as the kubelet mounts them (timestamped directory,
// ..data symlink) — and the config is pointed there.
func TestEdgeConfigLoads(t *testing.T) {
	e := loadEdge(t)
	root := t.TempDir()
	data := []byte(e.configYAML)
	for _, f := range edgeFiles {
		field := strings.Split(f.field, ".")
		pth := str(e.config, field...)
		if pth == "" {
			continue // TestEdgeFilesAreMounted says why that is wrong
		}
		local := filepath.Join(root, pth)
		if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
			t.Fatal(err)
		}
		s, err := e.pod.resolve(e.pod.container, pth)
		switch {
		case err != nil:
			t.Fatalf("%s: %v", f.field, err)
		case f.dir && s.kind == "configMap":
			if err := os.Mkdir(local, 0o755); err != nil {
				t.Fatal(err)
			}
			writeConfigMapMount(t, local, mapOf(e.cl.get(t, "ConfigMap", s.name).m, "data"))
		case f.dir:
			if err := os.Mkdir(local, 0o700); err != nil {
				t.Fatal(err)
			}
		default:
			_, v, err := e.content(t, pth)
			if err != nil {
				t.Fatalf("%s: %v", f.field, err)
			}
			if err := os.WriteFile(local, []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		data = setScalar(t, data, local, field...)
	}

	const name = "ConfigMap ztna-config, ztna.yaml"
	cfg, err := proxy.ParseConfig(name, data)
	if err != nil {
		t.Fatalf("the edge refuses the config in the ConfigMap: %v", err)
	}
	if cfg.Listen.Address != str(e.config, "listen", "address") || len(cfg.Apps) == 0 || cfg.Store.Backend != proxy.StoreRedis {
		t.Errorf("the loader read listen.address %q, %d apps, store %q; the manifest says %q, %d, %q",
			cfg.Listen.Address, len(cfg.Apps), cfg.Store.Backend,
			str(e.config, "listen", "address"), len(list(e.config, "apps")), str(e.config, "store", "backend"))
	}

	// The loader must be strict, or the test above proves little: a field
	// it does not know (a typo, a section of another version) is an error.
	bad := append(slices.Clip(data), "\nnot_a_ztna_field: true\n"...)
	if _, err := proxy.ParseConfig(name, bad); err == nil || !strings.Contains(err.Error(), "not_a_ztna_field") {
		t.Errorf("the loader accepted an unknown field (err %v): it must reject them", err)
	}
}

// writeConfigMapMount lays out data as the kubelet mounts a ConfigMap.
func writeConfigMapMount(t *testing.T, dir string, data map[string]any) {
	t.Helper()
	ts := "..2026_01_02_03_04_05.000000001"
	if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range data {
		s, _ := v.(string)
		if err := os.WriteFile(filepath.Join(dir, ts, k), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(ts, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// setScalar returns data with the scalar at path set to v, comments kept.
func setScalar(t *testing.T, data []byte, v string, path ...string) []byte {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) != 1 {
		t.Fatalf("parse config: %v", err)
	}
	n := doc.Content[0]
	for _, k := range path {
		var next *yaml.Node
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			t.Fatalf("config has no %s", strings.Join(path, "."))
		}
		n = next
	}
	n.Kind, n.Tag, n.Value, n.Style = yaml.ScalarNode, "!!str", v, yaml.DoubleQuotedStyle
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEdgeScheduling(t *testing.T) {
	e := loadEdge(t)
	dep, labels := e.pod.owner, e.pod.labels()
	if !labelsMatch(mapOf(dep.m, "spec", "selector", "matchLabels"), labels) {
		t.Errorf("%s: selector does not match the pod labels", dep)
	}
	replicas, _ := at(dep.m, "spec", "replicas").(int)

	antiAffinity := false
	aa := mapOf(e.pod.spec, "affinity", "podAntiAffinity")
	terms := list(aa, "requiredDuringSchedulingIgnoredDuringExecution")
	for _, w := range list(aa, "preferredDuringSchedulingIgnoredDuringExecution") {
		terms = append(terms, at(w, "podAffinityTerm"))
	}
	for _, term := range terms {
		if str(term, "topologyKey") == "kubernetes.io/hostname" && labelsMatch(mapOf(term, "labelSelector", "matchLabels"), labels) {
			antiAffinity = true
		}
	}
	if !antiAffinity {
		t.Error("no pod anti-affinity on kubernetes.io/hostname for the edge pods: both replicas could share a node")
	}

	var pdbs []object
	for _, o := range loadCluster(t).ofKind("PodDisruptionBudget") {
		if labelsMatch(mapOf(o.m, "spec", "selector", "matchLabels"), labels) {
			pdbs = append(pdbs, o)
		}
	}
	if len(pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets select the edge pods, want 1", len(pdbs))
	}
	if n, ok := at(pdbs[0].m, "spec", "minAvailable").(int); !ok || n < 1 || n >= replicas {
		t.Errorf("%s: minAvailable %v, want at least 1 and below the %d replicas (or no node could ever be drained)", pdbs[0], at(pdbs[0].m, "spec", "minAvailable"), replicas)
	}
}

func TestEdgeService(t *testing.T) {
	e := loadEdge(t)
	_, port := hostPort(t, "listen.address", e.listen.Address)
	_, admin := hostPort(t, "listen.admin_address", e.listen.AdminAddress)
	var lbs []object
	for _, o := range e.cl.ofKind("Service") {
		if labelsMatch(mapOf(o.m, "spec", "selector"), e.pod.labels()) {
			lbs = append(lbs, o)
		}
	}
	if len(lbs) != 1 {
		t.Fatalf("%d Services select the edge pods, want 1", len(lbs))
	}
	svc := lbs[0]
	if tp := str(svc.m, "spec", "type"); tp != "LoadBalancer" {
		t.Errorf("%s: type %q, want LoadBalancer", svc, tp)
	}
	if p := str(svc.m, "spec", "externalTrafficPolicy"); p != "Local" {
		t.Errorf("%s: externalTrafficPolicy %q, want Local (keeps client addresses)", svc, p)
	}
	for _, proto := range []string{"TCP", "UDP"} {
		found := false
		for _, sp := range list(svc.m, "spec", "ports") {
			pp := str(sp, "protocol")
			if pp == "" {
				pp = "TCP"
			}
			target := at(sp, "targetPort")
			if target == nil {
				target = at(sp, "port")
			}
			if at(sp, "port") == 443 && pp == proto && containerPort(e.pod.container, target, proto) == port {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no port 443/%s to the edge's listen port %d/%s", svc, proto, port, proto)
		}
	}
	for _, sp := range list(svc.m, "spec", "ports") {
		if target := at(sp, "targetPort"); containerPort(e.pod.container, target, "TCP") == admin || target == admin {
			t.Errorf("%s exposes the admin port (metrics) to the load balancer", svc)
		}
	}
}

// TestPodSecurity checks every container of every workload.
func TestPodSecurity(t *testing.T) {
	cl := loadCluster(t)
	var workloads []object
	for _, k := range []string{"Deployment", "StatefulSet", "DaemonSet", "Job"} {
		workloads = append(workloads, cl.ofKind(k)...)
	}
	if len(workloads) < 2 {
		t.Fatalf("found %d workloads, want the edge and Redis", len(workloads))
	}
	for _, w := range workloads {
		spec := mapOf(w.m, "spec", "template", "spec")
		podSC := mapOf(spec, "securityContext")
		if str(podSC, "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s: want securityContext.seccompProfile.type RuntimeDefault", w)
		}
		if at(spec, "automountServiceAccountToken") != false {
			t.Errorf("%s: neither the edge nor Redis calls the Kubernetes API; set automountServiceAccountToken: false", w)
		}
		for _, key := range []string{"hostNetwork", "hostPID", "hostIPC"} {
			if at(spec, key) == true {
				t.Errorf("%s: %s", w, key)
			}
		}
		containers := append(slices.Clip(list(spec, "initContainers")), list(spec, "containers")...)
		for _, c := range containers {
			sc := mapOf(c, "securityContext")
			name := fmt.Sprintf("%s container %s", w, str(c, "name"))
			either := func(key string) any {
				if v := at(sc, key); v != nil {
					return v
				}
				return at(podSC, key)
			}
			if either("runAsNonRoot") != true {
				t.Errorf("%s: runAsNonRoot is not true", name)
			}
			if uid, ok := either("runAsUser").(int); !ok || uid == 0 {
				t.Errorf("%s: runAsUser %v, want a non-zero uid", name, either("runAsUser"))
			}
			if at(sc, "readOnlyRootFilesystem") != true {
				t.Errorf("%s: readOnlyRootFilesystem is not true", name)
			}
			if at(sc, "allowPrivilegeEscalation") != false {
				t.Errorf("%s: allowPrivilegeEscalation is not false", name)
			}
			if at(sc, "privileged") == true {
				t.Errorf("%s: privileged", name)
			}
			if !slices.Contains(list(sc, "capabilities", "drop"), any("ALL")) {
				t.Errorf("%s: capabilities.drop does not include ALL", name)
			}
			for _, add := range list(sc, "capabilities", "add") {
				if add != "NET_BIND_SERVICE" {
					t.Errorf("%s: adds capability %v", name, add)
				}
			}
			if mapOf(c, "resources", "requests") == nil || at(c, "resources", "limits", "memory") == nil {
				t.Errorf("%s: want resource requests and a memory limit", name)
			}
		}
	}
}

func TestSecretsArePlaceholders(t *testing.T) {
	cl := loadCluster(t)
	secrets := cl.ofKind("Secret")
	if len(secrets) == 0 {
		t.Fatal("no example Secrets")
	}
	used := map[string]bool{}
	for _, k := range []string{"Deployment", "StatefulSet"} {
		for _, w := range cl.ofKind(k) {
			for _, v := range list(w.m, "spec", "template", "spec", "volumes") {
				used[str(v, "secret", "secretName")] = true
			}
		}
	}
	for _, s := range secrets {
		if at(s.m, "data") != nil {
			t.Errorf("%s has base64 data: example Secrets hold only stringData placeholders", s)
		}
		sd := mapOf(s.m, "stringData")
		if len(sd) == 0 {
			t.Errorf("%s has no stringData", s)
		}
		for k, v := range sd {
			if v, _ := v.(string); !strings.Contains(v, placeholder) {
				t.Errorf("%s key %s is not a %s placeholder: never commit a real secret", s, k, placeholder)
			}
		}
		if !used[s.name()] {
			t.Errorf("%s is mounted by no workload", s)
		}
	}
}

// ---------------------------------------------------------------------------
// Redis

// redisSetup is the Redis the edge's store.redis.addrs points at.
type redisSetup struct {
	pod      pod
	conf     string // redis.conf
	confDir  map[string][]string
	acl      string // users.acl
	username string
	prefix   string
}

func loadRedis(t *testing.T, e edgeSetup) redisSetup {
	t.Helper()
	if b := str(e.config, "store", "backend"); b != "redis" {
		t.Fatalf("store.backend is %q, want redis: replicas share state through it", b)
	}
	addrs := list(e.config, "store", "redis", "addrs")
	if len(addrs) != 1 {
		t.Fatalf("store.redis.addrs %v: the manifests run one Redis", addrs)
	}
	host, port := hostPort(t, "store.redis.addrs[0]", fmt.Sprint(addrs[0]))
	svc := e.cl.get(t, "Service", host)
	var target any
	for _, sp := range list(svc.m, "spec", "ports") {
		if at(sp, "port") == port {
			target = at(sp, "targetPort")
		}
	}
	if target == nil {
		t.Fatalf("%s has no port %d (store.redis.addrs)", svc, port)
	}
	var r redisSetup
	for _, ss := range e.cl.ofKind("StatefulSet") {
		if labelsMatch(mapOf(svc.m, "spec", "selector"), mapOf(ss.m, "spec", "template", "metadata", "labels")) {
			r.pod = workloadPod(t, ss, "redis")
		}
	}
	if r.pod.container == nil {
		t.Fatalf("%s selects no StatefulSet with a redis container", svc)
	}
	if containerPort(r.pod.container, target, "TCP") < 0 {
		t.Fatalf("%s targets port %v, which the redis container does not declare", svc, target)
	}
	args := command(r.pod.container)
	if len(args) < 2 || args[0] != "redis-server" {
		t.Fatalf("the redis container runs %q, want redis-server CONFIG", args)
	}
	var err error
	if _, r.conf, err = r.pod.fileFrom(r.pod.container, e.cl, args[1]); err != nil {
		t.Fatalf("redis config %s: %v", args[1], err)
	}
	r.confDir = map[string][]string{}
	for _, line := range strings.Split(r.conf, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			r.confDir[strings.ToLower(f[0])] = f[1:]
		}
	}
	if p := r.confDir["port"]; len(p) != 1 || containerPort(r.pod.container, atoi(p[0]), "TCP") < 0 {
		t.Fatalf("redis.conf port %v is not a container port", p)
	}
	aclFile := strings.Join(r.confDir["aclfile"], " ")
	if _, r.acl, err = r.pod.fileFrom(r.pod.container, e.cl, aclFile); err != nil {
		t.Fatalf("redis.conf aclfile %q: %v", aclFile, err)
	}
	r.username = str(e.config, "store", "redis", "username")
	r.prefix = str(e.config, "store", "redis", "key_prefix")
	if r.username == "" || r.prefix == "" {
		t.Fatal("store.redis.username and key_prefix must be set: the ACL confines the edge to its prefix")
	}
	pw := str(e.config, "store", "redis", "password_file")
	if _, _, err := e.content(t, pw); err != nil {
		t.Fatalf("store.redis.password_file: %v", err)
	}
	return r
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// aclUser returns the rules of user name in an ACL file.
func aclUser(acl, name string) []string {
	for _, line := range strings.Split(acl, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "user" && f[1] == name {
			return f[2:]
		}
	}
	return nil
}

func TestRedisManifests(t *testing.T) {
	e := loadEdge(t)
	r := loadRedis(t, e)
	if n, _ := at(r.pod.owner.m, "spec", "replicas").(int); n != 1 {
		t.Errorf("%s: %d replicas, want 1 (one primary; use Sentinel or Cluster for more)", r.pod.owner, n)
	}
	for _, w := range []struct{ directive, want string }{
		{"appendonly", "yes"},
		{"maxmemory-policy", "noeviction"},
	} {
		if got := strings.Join(r.confDir[w.directive], " "); got != w.want {
			t.Errorf("redis.conf %s %q, want %q", w.directive, got, w.want)
		}
	}
	dataDir := strings.Join(r.confDir["dir"], " ")
	if s, err := r.pod.resolve(r.pod.container, dataDir); err != nil || s.kind != "claim" || s.key != "" {
		t.Errorf("redis.conf dir %q is not a persistent volume claim mount (%v)", dataDir, err)
	}

	def := aclUser(r.acl, "default")
	if !slices.Contains(def, "off") {
		t.Errorf("users.acl: the default user is not off (%q): anyone could connect without a password", def)
	}
	u := aclUser(r.acl, r.username)
	if u == nil {
		t.Fatalf("users.acl has no user %q (store.redis.username)", r.username)
	}
	// Least privilege: the store's own commands (which it documents, and
	// its tests run with) on its key prefix, and the bus's channel
	// (PREFIXevents, cmd/ztna/store.go).
	want := append([]string{"on", "resetkeys", "~" + r.prefix + "*", "resetchannels", "&" + r.prefix + "events",
		"+publish", "+subscribe"}, strings.Fields(redisstore.ACLCommands)...)
	for _, w := range want {
		if !slices.Contains(u, w) {
			t.Errorf("users.acl: user %s lacks %q", r.username, w)
		}
	}
	for _, rule := range u {
		if rule == "nopass" || rule == "allkeys" || rule == "~*" || rule == "allchannels" || rule == "&*" ||
			rule == "allcommands" || rule == "+@all" {
			t.Errorf("users.acl: user %s has %q", r.username, rule)
		}
	}
	if !slices.ContainsFunc(u, func(s string) bool { return strings.HasPrefix(s, "#") }) {
		t.Errorf("users.acl: user %s has no #SHA256 password (keep the password itself out of the ACL file)", r.username)
	}

	// Only the edge may connect.
	ok := false
	for _, np := range e.cl.ofKind("NetworkPolicy") {
		if !labelsMatch(mapOf(np.m, "spec", "podSelector", "matchLabels"), r.pod.labels()) {
			continue
		}
		for _, in := range list(np.m, "spec", "ingress") {
			for _, from := range list(in, "from") {
				if mapOf(from, "namespaceSelector") == nil && mapOf(from, "ipBlock") == nil &&
					labelsMatch(mapOf(from, "podSelector", "matchLabels"), e.pod.labels()) {
					ok = true
				} else {
					t.Errorf("%s lets in more than the edge pods: %v", np, from)
				}
			}
		}
	}
	if !ok {
		t.Error("no NetworkPolicy limits Redis to the edge pods")
	}
}

// TestRedisServerAcceptsConfig runs the real redis-server with the
// manifests' redis.conf and users.acl (the placeholder hash replaced by a
// test password's), on loopback, and checks what the ACL allows the edge.
func TestRedisServerAcceptsConfig(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed; `make test` installs it (.ci/deps), or: apt-get install redis-server")
	}
	e := loadEdge(t)
	r := loadRedis(t, e)
	dir := t.TempDir()

	const password = "deploy-test-password-0123456789abcdef"
	sum := sha256.Sum256([]byte(password))
	var acl strings.Builder
	for _, line := range strings.Split(r.acl, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "user" && f[1] == r.username {
			for i := range f {
				if strings.HasPrefix(f[i], "#") {
					f[i] = "#" + hex.EncodeToString(sum[:])
				}
			}
			line = strings.Join(f, " ")
		}
		acl.WriteString(line + "\n")
	}
	aclPath := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(aclPath, []byte(acl.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	port := freePort(t)
	var conf strings.Builder
	override := map[string]string{
		"port":    strconv.Itoa(port),
		"bind":    "127.0.0.1",
		"dir":     dir,
		"aclfile": aclPath,
	}
	for _, line := range strings.Split(r.conf, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			if v, ok := override[strings.ToLower(f[0])]; ok {
				line = f[0] + " " + v
			}
		}
		conf.WriteString(line + "\n")
	}
	confPath := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, confPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	ready := make(chan struct{})
	var log bytes.Buffer
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		cancel()
		<-exited
		_ = cmd.Wait()
	})
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("redis-server refused the manifests' config:\n%s", log.String())
	case <-ctx.Done():
		t.Fatalf("redis-server did not become ready within the deadline:\n%s", log.String())
	}

	// The edge's own store, with the manifests' store.redis settings
	// (only the address and the password file are this test's).
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	pwFile := filepath.Join(dir, "password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var sc redisstore.Config
	raw, err := yaml.Marshal(at(e.config, "store", "redis"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &sc); err != nil {
		t.Fatal(err)
	}
	sc.Addrs, sc.PasswordFile = []string{addr}, pwFile
	st, err := redisstore.Open(ctx, sc, nil)
	if err != nil {
		t.Fatalf("the store cannot connect as the manifests' ACL user: %v", err)
	}
	defer st.Close()
	ops := []struct {
		what string
		do   func() error
	}{
		{"Put", func() error { return st.Put(ctx, "sessions", "k", []byte("v"), time.Minute) }},
		{"Get", func() error { _, err := st.Get(ctx, "sessions", "k"); return err }},
		{"PutIfAbsent", func() error { _, err := st.PutIfAbsent(ctx, "jti", "k", []byte("v"), time.Minute); return err }},
		{"List", func() error { return st.List(ctx, "sessions", "", func(string, []byte) bool { return true }) }},
		{"Take", func() error { _, err := st.Take(ctx, "jti", "k"); return err }},
		{"Delete", func() error { return st.Delete(ctx, "sessions", "k") }},
		{"PUBLISH " + st.Prefix() + "events", func() error { return st.Client().Publish(ctx, st.Prefix()+"events", "x").Err() }},
		{"SUBSCRIBE " + st.Prefix() + "events", func() error {
			ps := st.Client().Subscribe(ctx, st.Prefix()+"events")
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				return err
			}
			return ps.Ping(ctx)
		}},
	}
	for _, op := range ops {
		if err := op.do(); err != nil {
			t.Errorf("as user %s: %s: %v", r.username, op.what, err)
		}
	}

	refused := []struct {
		what string
		do   func(c *redis.Client) error
	}{
		{"SET outside the prefix", func(c *redis.Client) error { return c.Set(ctx, "other:k", "v", 0).Err() }},
		{"KEYS", func(c *redis.Client) error { return c.Keys(ctx, r.prefix+"*").Err() }},
		{"FLUSHALL", func(c *redis.Client) error { return c.FlushAll(ctx).Err() }},
		{"CONFIG SET", func(c *redis.Client) error { return c.ConfigSet(ctx, "appendonly", "no").Err() }},
		{"SUBSCRIBE outside the prefix", func(c *redis.Client) error {
			ps := c.Subscribe(ctx, "other")
			defer ps.Close()
			_, err := ps.Receive(ctx)
			return err
		}},
	}
	edgeUser := redis.NewClient(&redis.Options{Addr: addr, Username: r.username, Password: password,
		DialTimeout: 5 * time.Second, MaxRetries: -1, DisableIdentity: true})
	defer edgeUser.Close()
	for _, a := range refused {
		if err := a.do(edgeUser); err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("as user %s: %s: got %v, want NOPERM", r.username, a.what, err)
		}
	}
	for _, o := range []*redis.Options{
		{Addr: addr}, // the default user
		{Addr: addr, Username: r.username, Password: "wrong"},
	} {
		o.MaxRetries, o.DialTimeout = -1, 5*time.Second
		c := redis.NewClient(o)
		if err := c.Ping(ctx).Err(); err == nil {
			t.Errorf("PING as user %q with password %q succeeded", o.Username, o.Password)
		}
		c.Close()
	}
	if fi, err := os.Stat(filepath.Join(dir, "appendonlydir")); err != nil || !fi.IsDir() {
		t.Errorf("no append-only file in the data dir: appendonly is not on (%v)", err)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ---------------------------------------------------------------------------
// Dockerfile

type instruction struct {
	cmd  string // upper case
	args string
}

func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" && cur.Len() == 0 {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// goModVersion is the toolchain go.mod asks for: its toolchain line, or
// its go line.
func goModVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goLine, toolchain string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "go" {
			goLine = f[1]
		}
		if len(f) == 2 && f[0] == "toolchain" {
			toolchain = strings.TrimPrefix(f[1], "go")
		}
	}
	if toolchain != "" {
		return toolchain
	}
	if goLine == "" {
		t.Fatal("go.mod has no go line")
	}
	return goLine
}

func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	args := map[string]string{} // ARG defaults, global and per stage
	expand := func(s string) string {
		return os.Expand(s, func(k string) string { return args[k] })
	}
	type stage struct {
		image, name string
		ins         []instruction
	}
	var stages []*stage
	for _, in := range ins {
		switch in.cmd {
		case "ARG":
			if k, v, ok := strings.Cut(in.args, "="); ok {
				args[k] = v
			}
		case "FROM":
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--platform=") })
			s := &stage{image: expand(f[0])}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}

	// The build stage: the Go toolchain go.mod asks for.
	want := goModVersion(t)
	build := stages[0]
	repo, tag, _ := strings.Cut(build.image, ":")
	tag, _, _ = strings.Cut(tag, "@")
	if repo != "golang" || (tag != want && !strings.HasPrefix(tag, want+"-")) {
		t.Errorf("build stage FROM %s, want golang:%s (go.mod): the image's GOTOOLCHAIN=local refuses an older Go", build.image, want)
	}
	var goBuild string
	for _, in := range build.ins {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			goBuild = in.args
		}
	}
	for _, w := range []string{"CGO_ENABLED=0", "-trimpath", "-ldflags", "-s -w", "-X main.version=", "./cmd/ztna"} {
		if !strings.Contains(goBuild, w) {
			t.Errorf("the go build step %q lacks %q", goBuild, w)
		}
	}
	main, err := os.ReadFile(filepath.Join("..", "cmd", "ztna", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^var version = "`).Match(main) {
		t.Error("cmd/ztna/main.go has no `var version = \"…\"` for -X main.version to set")
	}

	// The runtime stage.
	final := stages[len(stages)-1]
	if !regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?:nonroot(@sha256:[0-9a-f]{64})?$`).MatchString(final.image) && final.image != "scratch" {
		t.Errorf("runtime stage FROM %s, want gcr.io/distroless/static-debian12:nonroot (or scratch)", final.image)
	}
	var user, entry string
	var exposed []string
	copied := false
	for _, in := range final.ins {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "COPY":
			if strings.Contains(in.args, "--from="+build.name) && strings.HasSuffix(in.args, " /ztna") {
				copied = true
			}
		}
	}
	if uid, _, _ := strings.Cut(user, ":"); atoi(uid) == 0 {
		t.Errorf("USER %q, want a numeric non-root uid (runAsNonRoot cannot check names)", user)
	}
	if !copied {
		t.Errorf("the runtime stage does not copy the binary from stage %q to /ztna", build.name)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entry), &ep); err != nil || !slices.Equal(ep, []string{"/ztna", "serve", "--config", "/etc/ztna/ztna.yaml"}) {
		t.Errorf("ENTRYPOINT %s, want [\"/ztna\",\"serve\",\"--config\",\"/etc/ztna/ztna.yaml\"] (exec form)", entry)
	}
	for _, p := range []string{"443/tcp", "443/udp", "9090/tcp"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("EXPOSE lacks %s (got %q)", p, exposed)
		}
	}
}

// TestDockerignore checks the build context: the repository root.
func TestDockerignore(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	type pattern struct {
		re     *regexp.Regexp
		negate bool
	}
	var pats []pattern
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		line = path.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/"))
		var re strings.Builder
		for i := 0; i < len(line); i++ {
			switch {
			case strings.HasPrefix(line[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(line[i:], "**"):
				re.WriteString(".*")
				i++
			case line[i] == '*':
				re.WriteString("[^/]*")
			case line[i] == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(line[i : i+1]))
			}
		}
		// A pattern also excludes everything below what it matches.
		pats = append(pats, pattern{regexp.MustCompile("^" + re.String() + "(/.*)?$"), neg})
	}
	excluded := func(p string) bool {
		ex := false
		for _, pt := range pats {
			if pt.re.MatchString(p) {
				ex = !pt.negate
			}
		}
		return ex
	}
	for _, p := range []string{".git", ".git/config", "bin/ztna", ".ztna-dev/device-ca-key.pem", "ztna"} {
		if !excluded(p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/ztna/main.go", "proxy/config.go", "internal/config/config.go",
		"web/templates/page.html", "web/assets/app.css", "deploy/ztna.example.yaml"} {
		if excluded(p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
}

// ---------------------------------------------------------------------------
// systemd

func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("ztna.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{} // "Section.Key" → values in order
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("ztna.service: %q is not KEY=VALUE", line)
			}
			unit[section+"."+strings.TrimSpace(k)] = append(unit[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	last := func(k string) string {
		v := unit["Service."+k]
		if len(v) == 0 {
			return ""
		}
		return v[len(v)-1]
	}

	for _, w := range []struct{ key, want string }{
		{"NoNewPrivileges", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"PrivateDevices", "yes"},
		{"ProtectKernelTunables", "yes"},
		{"ProtectKernelModules", "yes"},
		{"ProtectKernelLogs", "yes"},
		{"ProtectControlGroups", "yes"},
		{"RestrictNamespaces", "yes"},
		{"RestrictSUIDSGID", "yes"},
		{"LockPersonality", "yes"},
		{"MemoryDenyWriteExecute", "yes"},
		{"CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"},
		{"AmbientCapabilities", "CAP_NET_BIND_SERVICE"},
		{"StateDirectory", "ztna"},
		{"UMask", "0077"},
		{"Restart", "on-failure"},
	} {
		if got := last(w.key); got != w.want {
			t.Errorf("ztna.service: %s=%q, want %q", w.key, got, w.want)
		}
	}
	if u := last("User"); (u == "" || u == "root" || u == "0") && last("DynamicUser") != "yes" {
		t.Errorf("ztna.service runs as %q, want an unprivileged user", u)
	}
	fams := strings.Fields(last("RestrictAddressFamilies"))
	for _, f := range fams {
		if !slices.Contains([]string{"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}, f) {
			t.Errorf("ztna.service: RestrictAddressFamilies allows %s", f)
		}
	}
	if !slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") {
		t.Errorf("ztna.service: RestrictAddressFamilies=%q lacks AF_INET or AF_INET6", fams)
	}
	if len(unit["Service.SystemCallFilter"]) == 0 {
		t.Error("ztna.service: no SystemCallFilter")
	}
	if n, err := strconv.Atoi(last("LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("ztna.service: LimitNOFILE=%q, want at least 65536 (one per connection)", last("LimitNOFILE"))
	}
	if r := last("ExecReload"); !strings.Contains(r, "-HUP") || !strings.Contains(r, "$MAINPID") {
		t.Errorf("ztna.service: ExecReload=%q, want kill -HUP $MAINPID (SIGHUP reloads)", r)
	}
	if ks := last("KillSignal"); ks != "" && ks != "SIGTERM" {
		t.Errorf("ztna.service: KillSignal=%s; the edge drains on SIGTERM", ks)
	}
	start := strings.Fields(last("ExecStart"))
	i := slices.Index(start, "--config")
	if !slices.Contains(start, "serve") || i < 0 || i+1 == len(start) {
		t.Fatalf("ztna.service: ExecStart=%q, want ztna serve --config FILE", last("ExecStart"))
	}

	// The stop timeout covers the drain of deploy/ztna.example.yaml.
	var example map[string]any
	ex, err := os.ReadFile("ztna.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(ex, &example); err != nil {
		t.Fatal(err)
	}
	l := listenSection(t, example)
	stop, err := timespan(last("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("ztna.service: TimeoutStopSec: %v", err)
	}
	if need := l.DrainDelay + l.GraceTimeout + stopMargin; stop < need {
		t.Errorf("ztna.service: TimeoutStopSec %s < drain_delay %s + grace_timeout %s + %s (ztna.example.yaml): systemd would SIGKILL a drain",
			stop, l.DrainDelay, l.GraceTimeout, stopMargin)
	}
}

// timespan parses a systemd time span ("60", "90s", "1min 30s").
func timespan(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("not set (the default, 90s, may not match the config)")
	}
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	units := map[string]time.Duration{"ms": time.Millisecond, "s": time.Second, "sec": time.Second,
		"m": time.Minute, "min": time.Minute, "h": time.Hour, "hr": time.Hour}
	var total time.Duration
	rest := strings.ReplaceAll(s, " ", "")
	re := regexp.MustCompile(`^(\d+)([a-z]+)`)
	for rest != "" {
		m := re.FindStringSubmatch(rest)
		if m == nil || units[m[2]] == 0 {
			return 0, fmt.Errorf("cannot parse %q", s)
		}
		total += time.Duration(atoi(m[1])) * units[m[2]]
		rest = rest[len(m[0]):]
	}
	return total, nil
}

// ---------------------------------------------------------------------------
// Generic access to decoded YAML

// at walks maps by string keys; nil when anything on the way is missing.
func at(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any, keys ...string) string { s, _ := at(v, keys...).(string); return s }

func list(v any, keys ...string) []any { l, _ := at(v, keys...).([]any); return l }

func mapOf(v any, keys ...string) map[string]any {
	m, _ := at(v, keys...).(map[string]any)
	return m
}
