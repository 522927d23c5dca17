package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigIsValid keeps deploy/ztna.example.yaml and the example
// GitOps policy in deploy/policy true: the config parses and validates, and
// the policy compiles against the config's apps and posture profiles.
func TestExampleConfigIsValid(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "deploy", "ztna.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs(filepath.Join("..", "deploy", "policy"))
	if err != nil {
		t.Fatal(err)
	}
	const where = "dir: /etc/ztna/policy"
	if !strings.Contains(string(data), where) {
		t.Fatalf("the example config no longer says %q", where)
	}
	data = []byte(strings.Replace(string(data), where, "dir: "+dir, 1))
	c, err := ParseConfig("ztna.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if c.policy == nil || !c.policy.HasApp("soc") || !c.policy.HasApp("payments-admin") {
		t.Fatalf("the example policy was not compiled with the config's apps")
	}
}
