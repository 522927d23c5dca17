package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ztna-dev/ztna/internal/files"
)

// Config selects and reaches the Redis deployment. Every zero value is safe:
// only Addrs is required.
type Config struct {
	// Addrs are host:port addresses. One address: a standalone server. Several:
	// Redis Cluster seed nodes (any reachable one is enough to find the
	// others; list more than one so startup survives a node being down).
	// With MasterName: the Sentinel addresses.
	Addrs []string `yaml:"addrs"`
	// MasterName is the Sentinel master set name; "" means no Sentinel.
	// Username and PasswordFile are for the Redis servers themselves; the
	// Sentinels have their own (SentinelUsername, SentinelPasswordFile).
	MasterName string `yaml:"master_name"`
	// SentinelUsername and SentinelPasswordFile authenticate to the
	// Sentinels (their requirepass, or an ACL user of sentinel.conf; the
	// password file as PasswordFile). "" → the Sentinels are reached
	// without credentials. Only with MasterName.
	SentinelUsername     string `yaml:"sentinel_username"`
	SentinelPasswordFile string `yaml:"sentinel_password_file"`
	// Username is the ACL user; "" means the default user.
	Username string `yaml:"username"`
	// PasswordFile holds the password (a trailing newline is ignored); ""
	// means no password. The password itself never appears in config.
	PasswordFile string `yaml:"password_file"`
	// DB is the database number for standalone and Sentinel; Redis Cluster
	// has only database 0.
	DB int `yaml:"db"`
	// TLS protects the connections; off by default.
	TLS TLSConfig `yaml:"tls"`
	// KeyPrefix starts every key this store writes. "" → "ztna:". Letters,
	// digits and ":_-./" only: it is used as an ACL key pattern (~PREFIX*)
	// and must not contain the hash tag braces "{}".
	KeyPrefix string `yaml:"key_prefix"`
	// DialTimeout bounds connecting (TCP and TLS). 0 → 2s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// ReadTimeout bounds waiting for one reply. 0 → 1s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds sending one command. 0 → 1s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
}

// TLSConfig is Config.TLS.
type TLSConfig struct {
	// Enabled turns TLS on (TLS 1.2 or later, server certificate verified).
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign the servers' certificates;
	// "" → the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key (PEM) for
	// servers that require one (tls-auth-clients yes); both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name checked in the server certificate; "" → the
	// host of the address dialled.
	ServerName string `yaml:"server_name"`
}

// Defaults for the zero values of Config.
const (
	DefaultKeyPrefix    = "ztna:"
	DefaultDialTimeout  = 2 * time.Second
	DefaultReadTimeout  = time.Second
	DefaultWriteTimeout = time.Second
)

const (
	// maxSecretFile bounds password and TLS key files; anything bigger is
	// not what it claims to be.
	maxSecretFile = 64 << 10
	// maxKeyPrefix bounds KeyPrefix, which is repeated in every key.
	maxKeyPrefix = 64
)

func (c Config) withDefaults() Config {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	return c
}

// mode names the deployment kind the addresses select, as go-redis's
// NewUniversalClient does.
func (c Config) mode() string {
	switch {
	case c.MasterName != "":
		return "sentinel"
	case len(c.Addrs) > 1:
		return "cluster"
	default:
		return "standalone"
	}
}

// Validate checks the configuration, including that the password and TLS
// files can be read and parsed, without connecting. Each problem is one
// error "FIELD: message" naming the YAML field (relative to this struct),
// joined with errors.Join. Errors never contain the password.
func (c Config) Validate() error {
	var errs []error
	field := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}

	if len(c.Addrs) == 0 {
		field("addrs", "at least one host:port is required")
	}
	seen := map[string]int{}
	for i, a := range c.Addrs {
		if err := checkAddr(a); err != nil {
			field(fmt.Sprintf("addrs[%d]", i), "%v", err)
			continue
		}
		if j, dup := seen[a]; dup {
			field(fmt.Sprintf("addrs[%d]", i), "%q is listed twice (also addrs[%d])", a, j)
		}
		seen[a] = i
	}
	if c.MasterName != "" && strings.ContainsFunc(c.MasterName, badNameRune) {
		field("master_name", "must be printable text without spaces")
	}
	if strings.ContainsFunc(c.Username, badNameRune) {
		field("username", "must be printable text without spaces")
	}
	switch {
	case c.DB < 0:
		field("db", "must not be negative, got %d", c.DB)
	case c.DB != 0 && c.mode() == "cluster":
		field("db", "Redis Cluster has only database 0 (several addrs without master_name select Cluster)")
	}
	if err := checkKeyPrefix(c.KeyPrefix); err != nil {
		field("key_prefix", "%v", err)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"dial_timeout", c.DialTimeout},
		{"read_timeout", c.ReadTimeout},
		{"write_timeout", c.WriteTimeout},
	} {
		if d.d < 0 {
			field(d.name, "must not be negative, got %s", d.d)
		}
	}
	if c.PasswordFile != "" {
		if _, _, err := readPassword(c.PasswordFile); err != nil {
			field("password_file", "%v", err)
		}
	}
	switch {
	case c.MasterName == "" && (c.SentinelUsername != "" || c.SentinelPasswordFile != ""):
		field("sentinel_username", "sentinel credentials need master_name (they are for the Sentinels)")
	case strings.ContainsFunc(c.SentinelUsername, badNameRune):
		field("sentinel_username", "must be printable text without spaces")
	case c.SentinelPasswordFile != "":
		if _, _, err := readPassword(c.SentinelPasswordFile); err != nil {
			field("sentinel_password_file", "%v", err)
		}
	}
	errs = append(errs, c.TLS.validate()...)
	return errors.Join(errs...)
}

func (t TLSConfig) validate() []error {
	var errs []error
	field := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("tls.%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if !t.Enabled {
		// Fail closed: settings for TLS without TLS mean the operator
		// believes the connection is protected when it is not.
		if t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" {
			field("enabled", "must be true when tls.ca_file, cert_file, key_file or server_name is set")
		}
		return errs
	}
	if t.CAFile != "" {
		if _, err := loadCA(t.CAFile); err != nil {
			field("ca_file", "%v", err)
		}
	}
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		field("cert_file", "cert_file and key_file go together")
	case t.CertFile != "":
		if _, err := loadKeyPair(t.CertFile, t.KeyFile); err != nil {
			field("cert_file", "%v", err)
		}
	}
	if strings.ContainsFunc(t.ServerName, badNameRune) {
		field("server_name", "must be a host name")
	}
	return errs
}

func badNameRune(r rune) bool { return r <= ' ' || r == 0x7f }

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port", a)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be a number from 1 to 65535", a)
	}
	return nil
}

func checkKeyPrefix(p string) error {
	if len(p) > maxKeyPrefix {
		return fmt.Errorf("is %d bytes, limit %d", len(p), maxKeyPrefix)
	}
	for _, r := range p {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		case strings.ContainsRune(":_-./", r):
		default:
			return fmt.Errorf("%q is not allowed: use letters, digits and \":_-./\" (the prefix is also an ACL key pattern, and braces would change Cluster hash slots)", r)
		}
	}
	return nil
}

// readPassword reads a password file: a regular file of at most
// maxSecretFile bytes, one trailing newline ignored, not empty. The error
// never contains the file's content.
func readPassword(path string) (string, fs.FileInfo, error) {
	data, fi, err := files.ReadRegular(path, maxSecretFile)
	if err != nil {
		return "", nil, fmt.Errorf("read %s: %w", path, err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	switch {
	case pw == "":
		return "", nil, fmt.Errorf("%s is empty", path)
	case strings.ContainsAny(pw, "\r\n"):
		return "", nil, fmt.Errorf("%s has more than one line", path)
	}
	return pw, fi, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, _, err := files.ReadRegular(path, maxSecretFile)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, _, err := files.ReadRegular(certFile, maxSecretFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read %s: %w", certFile, err)
	}
	keyPEM, _, err := files.ReadRegular(keyFile, maxSecretFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read %s: %w", keyFile, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// tls.X509KeyPair's errors describe the PEM structure, never
		// the key material.
		return tls.Certificate{}, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// tlsConfig builds the client TLS configuration, or nil when TLS is off.
func (t TLSConfig) tlsConfig() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// "" lets crypto/tls take the host from each dialled address,
		// which is what a Cluster with one certificate per node needs.
		ServerName: t.ServerName,
	}
	if t.CAFile != "" {
		pool, err := loadCA(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		conf.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := loadKeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls.cert_file: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}
