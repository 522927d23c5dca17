package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/internal/devenv"
	"github.com/ztna-dev/ztna/proxy"
)

// secretEnv names the variable the written config takes the dev IdP's
// client secret from (secrets never go in the file).
const secretEnv = "ZTNA_IT_CLIENT_SECRET"

// configYAML renders cfg as the YAML file `ztna serve` would read, with
// the client secret taken from secretEnv, and lets edit change the
// document before it is written. It returns the text.
func configYAML(t *testing.T, cfg *proxy.Config, edit func(root *yaml.Node)) []byte {
	t.Helper()
	c := *cfg
	c.OIDC.ClientSecret = ""
	c.OIDC.ClientSecretEnv = secretEnv
	var root yaml.Node
	if err := root.Encode(&c); err != nil {
		t.Fatalf("encode config: %v", err)
	}
	if edit != nil {
		edit(&root)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("dev-edge-secret")) {
		t.Fatal("the client secret was written into the config file")
	}
	return buf.Bytes()
}

// yamlValue returns the value node of key in mapping node m.
func yamlValue(t *testing.T, m *yaml.Node, key string) *yaml.Node {
	t.Helper()
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	t.Fatalf("no key %q in the YAML mapping", key)
	return nil
}

// lineOf returns the 1-based line of the first line of text containing s.
func lineOf(t *testing.T, text []byte, s string) int {
	t.Helper()
	for i, l := range strings.Split(string(text), "\n") {
		if strings.Contains(l, s) {
			return i + 1
		}
	}
	t.Fatalf("%q not in the config text", s)
	return 0
}

// writeFile replaces path with b atomically (write beside, rename), as
// config deployments do, so the watcher never reads half a file.
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// reloadEnv is newEnv plus the client secret in the environment and the
// current config as a file that loads back to what the edge serves.
func reloadEnv(t *testing.T) (*devenv.Env, string) {
	t.Setenv(secretEnv, "dev-edge-secret")
	env := newEnv(t)
	path := filepath.Join(t.TempDir(), "ztna.yaml")
	text := configYAML(t, currentConfig(env), nil)
	if _, err := proxy.ParseConfig(path, text); err != nil {
		t.Fatalf("the edge's own config does not load back: %v\n%s", err, text)
	}
	writeFile(t, path, text)
	return env, path
}

// A file the edge cannot take is refused with file, line and field, and
// the previous config keeps serving; a good one applies whole.
func TestReload(t *testing.T) {
	env, path := reloadEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v0 := env.Edge.State().Version

	// The unchanged file applies (and is a new version).
	if !env.Edge.Reload(ctx, path) {
		t.Fatalf("reloading the edge's own config failed:\n%s", processLog(t, env))
	}
	if v := env.Edge.State().Version; v != v0+1 {
		t.Fatalf("version %d after a reload, want %d", v, v0+1)
	}
	v0++

	bad := []struct {
		name      string
		edit      func(root *yaml.Node)
		marker    string // text on the offending line
		wantField string
	}{
		{"unknown field", func(root *yaml.Node) {
			app := yamlValue(t, root, "apps").Content[0]
			app.Content = append(app.Content,
				&yaml.Node{Kind: yaml.ScalarNode, Value: "upstream_timeout"},
				&yaml.Node{Kind: yaml.ScalarNode, Value: "5s"})
		}, "upstream_timeout:", "upstream_timeout"},
		{"bad upstream", func(root *yaml.Node) {
			yamlValue(t, yamlValue(t, root, "apps").Content[1], "upstream").Value = "ftp://127.0.0.1:1"
		}, "ftp://", "apps[1].upstream"},
		{"bad rule", func(root *yaml.Node) {
			rule := yamlValue(t, yamlValue(t, root, "apps").Content[0], "rules").Content[0]
			yamlValue(t, rule, "action").Value = "maybe"
		}, "maybe", "apps[0].rules[0].action"},
		{"auth host changes", func(root *yaml.Node) {
			yamlValue(t, root, "auth_host").Value = "login.localhost"
		}, "login.localhost", ""},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			text := configYAML(t, currentConfig(env), tc.edit)
			writeFile(t, path, text)
			logBefore := len(processLog(t, env).String())
			if env.Edge.Reload(ctx, path) {
				t.Fatalf("a config with %s was applied:\n%s", tc.name, text)
			}
			if v := env.Edge.State().Version; v != v0 {
				t.Errorf("version %d after a refused reload, want %d", v, v0)
			}
			logs := processLog(t, env).String()[logBefore:]
			var errLine string
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, "level=ERROR") && strings.Contains(l, "reload") {
					errLine = l
				}
			}
			if errLine == "" {
				t.Fatalf("no error logged for the refused reload:\n%s", logs)
			}
			if tc.wantField != "" {
				want := fmt.Sprintf("%s:%d", path, lineOf(t, text, tc.marker))
				if !strings.Contains(errLine, want) || !strings.Contains(errLine, tc.wantField) {
					t.Errorf("reload error %q does not name %s and field %s", errLine, want, tc.wantField)
				}
			}
			// The old config serves on: alice in, bob reading.
			whoamiAs(t, alice, env, "whoami", "/")
			whoamiAs(t, bob, env, "whoami", "/")
		})
	}

	// A valid change applies at once: finance loses whoami.
	cfg := currentConfig(env)
	whoamiRules(t, cfg)[1].Groups = []string{"engineering"}
	writeFile(t, path, configYAML(t, cfg, nil))
	if !env.Edge.Reload(ctx, path) {
		t.Fatalf("a valid config was refused:\n%s", processLog(t, env))
	}
	if v := env.Edge.State().Version; v != v0+1 {
		t.Errorf("version %d after a valid reload, want %d", v, v0+1)
	}
	e := expectJSONError(t, get(t, bob, env.AppURL("whoami")+"/", asAPI), http.StatusForbidden, "access_denied")
	if e.Rule != "" || !strings.Contains(e.Message, "bob@example.com") {
		t.Errorf("bob after the reload: rule %q message %q, want the default deny", e.Rule, e.Message)
	}
	if rep := whoamiAs(t, alice, env, "whoami", "/"); rep.User != "u-alice" || !rep.Verified {
		t.Errorf("alice after the reload: user %q verified %v", rep.User, rep.Verified)
	}
	// The served config is the file's.
	if got := env.Edge.State().Config.Apps[0].Rules[1].Groups; len(got) != 1 || got[0] != "engineering" {
		t.Errorf("served config has groups %v", got)
	}
}

// The file watcher picks up a changed file by itself.
func TestReloadWatchFile(t *testing.T) {
	env, path := reloadEnv(t)
	bob := loginAs(t, env, "whoami", "bob", bobPassword)
	// Serve the file's config, so the watcher's baseline is that file.
	if !env.Edge.Reload(context.Background(), path) {
		t.Fatalf("reloading the edge's own config failed:\n%s", processLog(t, env))
	}
	v0 := env.Edge.State().Version

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { env.Edge.WatchConfig(ctx, path, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	cfg := currentConfig(env)
	whoamiRules(t, cfg)[1].Groups = []string{"engineering"}
	writeFile(t, path, configYAML(t, cfg, nil))
	waitFor(t, 5*time.Second, "the watcher to apply the changed file", func() bool { return env.Edge.State().Version > v0 })
	expectJSONError(t, get(t, bob, env.AppURL("whoami")+"/", asAPI), http.StatusForbidden, "access_denied")

	// A broken write is ignored; the next good one applies.
	v1 := env.Edge.State().Version
	rejected := func() int { return strings.Count(processLog(t, env).String(), "config reload rejected") }
	r0 := rejected()
	writeFile(t, path, []byte("apps: [\n"))
	waitFor(t, 5*time.Second, "the watcher to refuse the broken file", func() bool { return rejected() > r0 })
	if v := env.Edge.State().Version; v != v1 {
		t.Fatalf("a broken file changed the version to %d", v)
	}
	whoamiRules(t, cfg)[1].Groups = []string{"engineering", "finance"}
	writeFile(t, path, configYAML(t, cfg, nil))
	waitFor(t, 5*time.Second, "the watcher to apply the fixed file", func() bool { return env.Edge.State().Version > v1 })
	whoamiAs(t, bob, env, "whoami", "/")

	// A renewed certificate (same config file, new bytes in the file it
	// names, as a Secret update does) is picked up too.
	v2 := env.Edge.State().Version
	certFile := env.Edge.State().Config.TLS.CertFile
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, append(pem, '\n'))
	waitFor(t, 5*time.Second, "the watcher to reload for the renewed certificate", func() bool { return env.Edge.State().Version > v2 })
}

// Apply, the entry point for configs built in code, holds them to the same
// rules as a file: an invalid one is refused and the old one serves on.
func TestApplyRefusesInvalidConfig(t *testing.T) {
	env := newEnv(t)
	alice := loginAs(t, env, "whoami", "alice", alicePassword)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, edit := range map[string]func(*proxy.Config){
		"ftp upstream":       func(c *proxy.Config) { c.Apps[1].Upstream = "ftp://127.0.0.1:1" },
		"duplicate app name": func(c *proxy.Config) { c.Apps[1].Name = "whoami" },
		"app on auth host":   func(c *proxy.Config) { c.Apps[1].Host = c.AuthHost },
		"bad rule action":    func(c *proxy.Config) { c.Apps[0].Rules[0].Action = "maybe" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := currentConfig(env)
			edit(cfg)
			v0 := env.Edge.State().Version
			if err := env.Edge.Apply(ctx, cfg); err == nil {
				t.Errorf("Apply accepted a config with %s", name)
			}
			if v := env.Edge.State().Version; v != v0 {
				t.Errorf("version %d after a refused Apply, want %d", v, v0)
			}
			whoamiAs(t, alice, env, "whoami", "/")
		})
	}
}
