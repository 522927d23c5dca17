package redisstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func writeFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned writes a certificate and its key as PEM files.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), 0o600)
	keyFile = writeFile(t, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), 0o600)
	return certFile, keyFile
}

func TestValidate(t *testing.T) {
	const secret = "hunter2-secret"
	pwFile := writeFile(t, secret+"\n", 0o600)
	emptyFile := writeFile(t, "\n", 0o600)
	twoLines := writeFile(t, secret+"\n"+secret+"\n", 0o600)
	notPEM := writeFile(t, "not a certificate", 0o600)
	cert, key := selfSigned(t)
	otherCert, _ := selfSigned(t)
	missing := filepath.Join(t.TempDir(), "missing")
	dir := t.TempDir()

	one := []string{"127.0.0.1:6379"}
	three := []string{"10.0.0.1:6379", "10.0.0.2:6379", "redis-3.internal:6379"}
	tests := []struct {
		name string
		c    Config
		want []string // the fields named, in order; none: valid
	}{
		{"standalone", Config{Addrs: one}, nil},
		{"standalone with everything", Config{Addrs: one, Username: "ztna", PasswordFile: pwFile, DB: 3,
			TLS:       TLSConfig{Enabled: true, CAFile: cert, CertFile: cert, KeyFile: key, ServerName: "redis.internal"},
			KeyPrefix: "corp/ztna.v1:", DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second}, nil},
		{"cluster", Config{Addrs: three}, nil},
		{"sentinel with db", Config{Addrs: three, MasterName: "mymaster", DB: 2}, nil},
		{"tls with system roots", Config{Addrs: one, TLS: TLSConfig{Enabled: true}}, nil},
		{"ipv6", Config{Addrs: []string{"[::1]:6379"}}, nil},

		{"no addrs", Config{}, []string{"addrs"}},
		{"addr without port", Config{Addrs: []string{"redis"}}, []string{"addrs[0]"}},
		{"addr without host", Config{Addrs: []string{":6379"}}, []string{"addrs[0]"}},
		{"port out of range", Config{Addrs: []string{"127.0.0.1:6379", "redis:70000"}}, []string{"addrs[1]"}},
		{"port zero", Config{Addrs: []string{"redis:0"}}, []string{"addrs[0]"}},
		{"duplicate addr", Config{Addrs: []string{"a:1", "b:1", "a:1"}}, []string{"addrs[2]"}},
		{"negative db", Config{Addrs: one, DB: -1}, []string{"db"}},
		{"db with cluster", Config{Addrs: three, DB: 1}, []string{"db"}},
		{"master name with space", Config{Addrs: one, MasterName: "my master"}, []string{"master_name"}},
		{"username with space", Config{Addrs: one, Username: "a b"}, []string{"username"}},
		{"prefix with hash tag", Config{Addrs: one, KeyPrefix: "ztna{x}:"}, []string{"key_prefix"}},
		{"prefix with glob", Config{Addrs: one, KeyPrefix: "ztna*"}, []string{"key_prefix"}},
		{"prefix too long", Config{Addrs: one, KeyPrefix: strings.Repeat("p", maxKeyPrefix+1)}, []string{"key_prefix"}},
		{"negative timeouts", Config{Addrs: one, DialTimeout: -1, ReadTimeout: -1, WriteTimeout: -time.Second},
			[]string{"dial_timeout", "read_timeout", "write_timeout"}},
		{"missing password file", Config{Addrs: one, PasswordFile: missing}, []string{"password_file"}},
		{"empty password file", Config{Addrs: one, PasswordFile: emptyFile}, []string{"password_file"}},
		{"password file of two lines", Config{Addrs: one, PasswordFile: twoLines}, []string{"password_file"}},
		{"password file is a directory", Config{Addrs: one, PasswordFile: dir}, []string{"password_file"}},
		{"tls settings with tls off", Config{Addrs: one, TLS: TLSConfig{CAFile: cert}}, []string{"tls.enabled"}},
		{"server name with tls off", Config{Addrs: one, TLS: TLSConfig{ServerName: "redis"}}, []string{"tls.enabled"}},
		{"missing ca file", Config{Addrs: one, TLS: TLSConfig{Enabled: true, CAFile: missing}}, []string{"tls.ca_file"}},
		{"ca file not PEM", Config{Addrs: one, TLS: TLSConfig{Enabled: true, CAFile: notPEM}}, []string{"tls.ca_file"}},
		{"cert without key", Config{Addrs: one, TLS: TLSConfig{Enabled: true, CertFile: cert}}, []string{"tls.cert_file"}},
		{"key without cert", Config{Addrs: one, TLS: TLSConfig{Enabled: true, KeyFile: key}}, []string{"tls.cert_file"}},
		{"key of another cert", Config{Addrs: one, TLS: TLSConfig{Enabled: true, CertFile: otherCert, KeyFile: key}}, []string{"tls.cert_file"}},
		{"several problems", Config{DB: -1, KeyPrefix: "{", PasswordFile: missing},
			[]string{"addrs", "db", "key_prefix", "password_file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			var lines []string
			if err != nil {
				lines = strings.Split(err.Error(), "\n")
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error contains the password: %v", err)
				}
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("Validate() = %v; want errors for %q", err, tc.want)
			}
			for i, f := range tc.want {
				if !strings.HasPrefix(lines[i], f+": ") {
					t.Errorf("error %d = %q, want it about %s", i, lines[i], f)
				}
			}
		})
	}
}

func TestConfigYAML(t *testing.T) {
	const doc = `
addrs: [redis-1:6379, redis-2:6379]
master_name: ""
username: ztna
password_file: /run/secrets/redis
db: 0
tls:
  enabled: true
  ca_file: /etc/ztna/redis-ca.pem
  cert_file: /etc/ztna/redis.pem
  key_file: /etc/ztna/redis-key.pem
  server_name: redis.internal
key_prefix: "prod:"
dial_timeout: 3s
read_timeout: 500ms
write_timeout: 2s
`
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Addrs: []string{"redis-1:6379", "redis-2:6379"}, Username: "ztna", PasswordFile: "/run/secrets/redis",
		TLS: TLSConfig{Enabled: true, CAFile: "/etc/ztna/redis-ca.pem", CertFile: "/etc/ztna/redis.pem",
			KeyFile: "/etc/ztna/redis-key.pem", ServerName: "redis.internal"},
		KeyPrefix: "prod:", DialTimeout: 3 * time.Second, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 2 * time.Second,
	}
	if c.mode() != "cluster" || strings.Join(c.Addrs, ",") != strings.Join(want.Addrs, ",") {
		t.Errorf("addrs = %v (%s)", c.Addrs, c.mode())
	}
	c.Addrs, want.Addrs = nil, nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", c, want)
	}
}

func TestDefaults(t *testing.T) {
	c := Config{Addrs: []string{"r:1"}}.withDefaults()
	if c.KeyPrefix != "ztna:" || c.DialTimeout != 2*time.Second || c.ReadTimeout != time.Second || c.WriteTimeout != time.Second {
		t.Errorf("defaults = %+v", c)
	}
	for _, tc := range []struct {
		c    Config
		mode string
	}{
		{Config{Addrs: []string{"a:1"}}, "standalone"},
		{Config{Addrs: []string{"a:1", "b:1"}}, "cluster"},
		{Config{Addrs: []string{"a:1"}, MasterName: "m"}, "sentinel"},
		{Config{Addrs: []string{"a:1", "b:1"}, MasterName: "m"}, "sentinel"},
	} {
		if got := tc.c.mode(); got != tc.mode {
			t.Errorf("%+v: mode %s, want %s", tc.c, got, tc.mode)
		}
	}
}

func TestTTLMillis(t *testing.T) {
	for _, tc := range []struct {
		ttl  time.Duration
		want int64
	}{
		{0, 0}, {time.Nanosecond, 1}, {time.Millisecond, 1}, {time.Millisecond + 1, 2},
		{1500 * time.Microsecond, 2}, {time.Hour, 3600000},
	} {
		if got := ttlMillis(tc.ttl); got != tc.want {
			t.Errorf("ttlMillis(%v) = %d, want %d", tc.ttl, got, tc.want)
		}
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"a", "b", true}, {"a/", "a0", true}, {"a\xff", "b", true}, {"\xff\xff", "", false}, {"a\xfe", "a\xff", true},
	} {
		got, ok := prefixEnd(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("prefixEnd(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBucketKeysAreInjective(t *testing.T) {
	s := &Store{prefix: "p:"}
	seen := map[string]string{}
	for _, bucket := range []string{"a", "a:b", "a}", "a%7D", "a%", "{a}", "%25", "%"} {
		for _, key := range []string{"c", "b:c", "}c", "k:c", "idx", "exp"} {
			b := s.bucket(bucket)
			for _, k := range []string{b.data(key), b.idx, b.exp} {
				id := bucket + "\x00" + key
				if k == b.idx || k == b.exp {
					id = bucket + "\x00index " + k
				}
				if prev, dup := seen[k]; dup && prev != id {
					t.Errorf("Redis key %q used for both %q and %q", k, prev, id)
				}
				seen[k] = id
			}
		}
	}
}
