package devidp

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// signingKey is one RSA key pair. retired is zero for the current key.
type signingKey struct {
	id      string
	key     *rsa.PrivateKey
	retired time.Time
}

var (
	_ op.SigningKey = (*signingKey)(nil)
	_ op.Key        = publicKey{}
)

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

// publicKey is the JWKS view of a signing key.
type publicKey struct{ k *signingKey }

func (p publicKey) ID() string                         { return p.k.id }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any                           { return &p.k.key.PublicKey }

func newSigningKey() (*signingKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("devidp: generate signing key: %w", err)
	}
	return &signingKey{id: randomHex(8), key: key}, nil
}

// RotateSigningKey makes a new key (with a new kid) the signing key. The old
// key stays in the JWKS so tokens it signed keep verifying until they could
// no longer be in use (the longest token TTL after rotation).
func (p *Provider) RotateSigningKey() error {
	next, err := newSigningKey() // slow; keep it outside the lock
	if err != nil {
		return err
	}
	p.st.mu.Lock()
	now := p.st.now()
	p.st.keys[len(p.st.keys)-1].retired = now
	p.st.keys = append(p.st.keys, next)
	p.st.pruneKeysLocked(now)
	p.st.mu.Unlock()
	p.log.Info("devidp: signing key rotated", "kid", next.id)
	return nil
}

// SignJWT signs arbitrary claims with the current signing key (RS256, typ
// JWT, current kid). Tests use it to forge tokens that verify against the
// JWKS but are wrong in some other way.
func (p *Provider) SignJWT(claims map[string]any) (string, error) {
	return p.sign(claims, "JWT")
}

func (p *Provider) sign(claims any, typ string) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devidp: marshal claims: %w", err)
	}
	key := p.st.currentKey()
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.RS256, Key: &jose.JSONWebKey{Key: key.key, KeyID: key.id}},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)),
	)
	if err != nil {
		return "", fmt.Errorf("devidp: signer: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devidp: sign: %w", err)
	}
	return jws.CompactSerialize()
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("devidp: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}
