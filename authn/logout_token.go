package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// maxLogoutToken bounds the logout_token before it is parsed.
const maxLogoutToken = 8 << 10

// LogoutToken is a verified OIDC back-channel logout token.
type LogoutToken struct {
	Subject   string
	SessionID string // the IdP's sid
	JTI       string
	// ReplayWindow is how long the jti must be remembered to refuse replays.
	ReplayWindow time.Duration
}

// VerifyLogoutToken validates raw as an OIDC Back-Channel Logout 1.0 token:
// signed by the IdP with an allowed algorithm, iss and aud match, not
// expired, iat recent, the back-channel logout event present, sub or sid
// present, and no nonce.
func (rp *RelyingParty) VerifyLogoutToken(ctx context.Context, raw string) (*LogoutToken, error) {
	if raw == "" || len(raw) > maxLogoutToken {
		return nil, errors.New("logout token missing or oversized")
	}
	ctx = oidc.ClientContext(ctx, rp.client)
	t, err := rp.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("logout token: %w", err)
	}
	var c struct {
		SID    string                     `json:"sid"`
		JTI    string                     `json:"jti"`
		Nonce  *string                    `json:"nonce"`
		Events map[string]json.RawMessage `json:"events"`
	}
	if err := t.Claims(&c); err != nil {
		return nil, fmt.Errorf("logout token claims: %w", err)
	}
	if _, ok := c.Events[backchannelEvent]; !ok {
		return nil, errors.New("logout token: no back-channel logout event")
	}
	if c.Nonce != nil {
		return nil, errors.New("logout token: must not contain a nonce")
	}
	if t.Subject == "" && c.SID == "" {
		return nil, errors.New("logout token: neither sub nor sid")
	}
	if c.JTI == "" || len(c.JTI) > 256 {
		return nil, errors.New("logout token: missing or oversized jti")
	}
	now := time.Now()
	if t.IssuedAt.After(now.Add(time.Minute)) || now.Sub(t.IssuedAt) > rp.cfg.MaxTokenAge {
		return nil, errors.New("logout token: iat out of range")
	}
	window := time.Until(t.Expiry) + time.Minute
	if window < rp.cfg.MaxTokenAge {
		window = rp.cfg.MaxTokenAge
	}
	return &LogoutToken{Subject: t.Subject, SessionID: c.SID, JTI: c.JTI, ReplayWindow: window}, nil
}
