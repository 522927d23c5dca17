package devidp

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

const (
	logoutTokenTTL    = 2 * time.Minute
	logoutPostTimeout = 5 * time.Second
	backChannelEvent  = "http://schemas.openid.net/event/backchannel-logout"
)

type logoutTarget struct {
	clientID string
	uri      string
	sids     []string // empty: one token with sub only
}

// BackChannelLogout ends every IdP session of the user (revoking their
// tokens) and tells each client with a BackChannelLogoutURI, per the OpenID
// Connect Back-Channel Logout spec: one signed logout_token per session the
// user has at that client (with its sid), or a single token with only sub
// if there is none. Each POST has a 5s timeout; any transport error or
// non-2xx answer is returned (all clients are still tried).
func (p *Provider) BackChannelLogout(ctx context.Context, username string) error {
	subject, targets, err := p.endUserSessions(username)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range targets {
		sids := t.sids
		if len(sids) == 0 {
			sids = []string{""}
		}
		for _, sid := range sids {
			if err := p.postLogoutToken(ctx, t, subject, sid); err != nil {
				errs = append(errs, fmt.Errorf("devidp: back-channel logout to client %q: %w", t.clientID, err))
				continue
			}
			p.log.Info("devidp: back-channel logout sent", "client", t.clientID, "user", username)
		}
	}
	return errors.Join(errs...)
}

// endUserSessions removes the user's sessions and returns, per client with
// a back-channel URI, the sessions it must be told about (oldest first).
func (p *Provider) endUserSessions(username string) (string, []logoutTarget, error) {
	st := p.st
	st.mu.Lock()
	defer st.mu.Unlock()
	u, ok := st.usersByName[username]
	if !ok {
		return "", nil, fmt.Errorf("devidp: unknown user %q", username)
	}
	var ended []*session
	for _, sess := range st.sessions {
		if sess.subject == u.Subject {
			ended = append(ended, sess)
		}
	}
	slices.SortFunc(ended, func(a, b *session) int {
		if c := a.authTime.Compare(b.authTime); c != 0 {
			return c
		}
		return strings.Compare(a.sid, b.sid)
	})
	for _, sess := range ended {
		st.endSessionLocked(sess.sid)
	}
	var targets []logoutTarget
	for _, c := range st.clients {
		if c.backChannelLogoutURI == "" {
			continue
		}
		t := logoutTarget{clientID: c.id, uri: c.backChannelLogoutURI}
		for _, sess := range ended {
			if sess.clientID == c.id {
				t.sids = append(t.sids, sess.sid)
			}
		}
		targets = append(targets, t)
	}
	slices.SortFunc(targets, func(a, b logoutTarget) int { return strings.Compare(a.clientID, b.clientID) })
	return u.Subject, targets, nil
}

func (p *Provider) postLogoutToken(ctx context.Context, t logoutTarget, subject, sid string) error {
	now := time.Now()
	claims := map[string]any{
		"iss":    p.issuer,
		"aud":    t.clientID,
		"iat":    now.Unix(),
		"exp":    now.Add(logoutTokenTTL).Unix(),
		"jti":    rand.Text(),
		"sub":    subject,
		"events": map[string]any{backChannelEvent: map[string]any{}},
	}
	if sid != "" {
		claims["sid"] = sid
	}
	token, err := p.sign(claims, "logout+jwt")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, logoutPostTimeout)
	defer cancel()
	body := url.Values{"logout_token": {token}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.uri, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.logoutClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBodyBytes))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}
