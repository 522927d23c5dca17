package authn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ztna-dev/ztna/internal/store"
)

// bucketUsers holds the directory: one record per user the edge has seen.
const bucketUsers = "users"

// Directory limits: far above a real directory's per-user needs, so that
// an admin form or a crafted claim cannot grow a record without bound.
const (
	MaxDirectoryUsers = 10_000 // users listed for previews and the console
	maxOverrides      = 64
	maxAttrKey        = 64
	maxAttrValue      = 256
)

// ErrInvalidAttribute is an attribute an admin may not set.
var ErrInvalidAttribute = errors.New("invalid attribute")

// DirectoryUser is what the edge knows about one user: the identity the
// IdP last asserted, and the attributes admins set on top of it.
type DirectoryUser struct {
	// IdP is the identity as the IdP last asserted it (login or refresh).
	IdP Identity `json:"idp"`
	// Overrides are attributes set in the console. They win over the IdP's
	// until cleared; an empty value hides the IdP's attribute.
	Overrides map[string]string `json:"overrides,omitempty"`
	// OverriddenBy and OverriddenAt say who last changed Overrides.
	OverriddenBy string    `json:"overridden_by,omitempty"`
	OverriddenAt time.Time `json:"overridden_at,omitzero"`
	FirstSeen    time.Time `json:"first_seen"`
	LastSeen     time.Time `json:"last_seen"`
}

// Effective is the identity the policy sees: the IdP's with the overrides
// applied.
func (u *DirectoryUser) Effective() Identity {
	id := u.IdP
	if len(u.Overrides) == 0 {
		return id
	}
	id.Attributes = maps.Clone(id.Attributes)
	if id.Attributes == nil {
		id.Attributes = map[string]string{}
	}
	for k, v := range u.Overrides {
		if v == "" {
			delete(id.Attributes, k)
		} else {
			id.Attributes[k] = v
		}
	}
	return id
}

// Directory records the users the edge has seen and the attributes admins
// set on them, in the store shared by every replica. Sessions carry the
// effective identity: login and refresh pass the IdP's identity through
// Seen, and SetOverrides rewrites the user's sessions, whose update moves
// their live connections at once on every replica.
type Directory struct {
	st       store.Store
	sessions *Sessions
	now      func() time.Time
}

// NewDirectory returns the directory kept in st, whose attribute changes
// apply to the sessions of sessions.
func NewDirectory(st store.Store, sessions *Sessions) *Directory {
	return &Directory{st: st, sessions: sessions, now: time.Now}
}

func userKey(subject string) string {
	h := sha256.Sum256([]byte(subject))
	return hex.EncodeToString(h[:])
}

// Get returns the user with OIDC subject sub, or store.ErrNotFound.
func (d *Directory) Get(ctx context.Context, sub string) (*DirectoryUser, error) {
	b, err := d.st.Get(ctx, bucketUsers, userKey(sub))
	if err != nil {
		return nil, err
	}
	var u DirectoryUser
	if err := json.Unmarshal(b, &u); err != nil {
		return nil, fmt.Errorf("directory record of %q: %w", sub, err)
	}
	return &u, nil
}

// Seen records id as the IdP's current assertion about its user and
// returns the effective identity. A store error is returned with the IdP's
// identity unchanged, so the caller decides whether to go on.
func (d *Directory) Seen(ctx context.Context, id Identity) (Identity, error) {
	if d == nil {
		return id, nil
	}
	now := d.now()
	u, err := d.Get(ctx, id.Subject)
	switch {
	case errors.Is(err, store.ErrNotFound):
		u = &DirectoryUser{FirstSeen: now}
	case err != nil:
		return id, err
	}
	if u.FirstSeen.IsZero() {
		u.FirstSeen = now // provisioned before: this is the first sign-in
	}
	u.IdP, u.LastSeen = id, now
	if err := d.put(ctx, u); err != nil {
		return id, err
	}
	return u.Effective(), nil
}

// Provision records a user known from elsewhere (a directory sync, the
// dev IdP's demo users) before they sign in, so that group previews and
// what-if questions can include them. A user already recorded is left as
// is; their first sign-in replaces the provisioned identity with the
// IdP's.
func (d *Directory) Provision(ctx context.Context, id Identity) error {
	_, err := d.Get(ctx, id.Subject)
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return d.put(ctx, &DirectoryUser{IdP: id})
}

// List returns up to MaxDirectoryUsers users, by email then subject.
func (d *Directory) List(ctx context.Context) ([]*DirectoryUser, error) {
	var out []*DirectoryUser
	err := d.st.List(ctx, bucketUsers, "", func(_ string, v []byte) bool {
		var u DirectoryUser
		if json.Unmarshal(v, &u) == nil {
			out = append(out, &u)
		}
		return len(out) < MaxDirectoryUsers
	})
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].IdP, out[j].IdP
		if a.Email != b.Email {
			return a.Email < b.Email
		}
		return a.Subject < b.Subject
	})
	return out, nil
}

// CheckOverrides validates attributes an admin wants to set.
func CheckOverrides(o map[string]string) error {
	if len(o) > maxOverrides {
		return fmt.Errorf("%w: at most %d attributes", ErrInvalidAttribute, maxOverrides)
	}
	for k, v := range o {
		if k == "" || len(k) > maxAttrKey || strings.Trim(k, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			return fmt.Errorf("%w: name %q: use lower-case letters, digits and _ (at most %d)", ErrInvalidAttribute, clip(k), maxAttrKey)
		}
		if len(v) > maxAttrValue || !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%w: %s: at most %d printable characters", ErrInvalidAttribute, k, maxAttrValue)
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// SetOverrides replaces the console-set attributes of user sub (nil clears
// them) and rewrites every session of the user with the new effective
// identity; each rewrite re-decides the session's live connections here
// and, through the bus, on every other replica. It returns the updated
// user and how many sessions were rewritten.
func (d *Directory) SetOverrides(ctx context.Context, sub string, overrides map[string]string, by string) (*DirectoryUser, int, error) {
	if err := CheckOverrides(overrides); err != nil {
		return nil, 0, err
	}
	u, err := d.Get(ctx, sub)
	if err != nil {
		return nil, 0, err
	}
	u.Overrides = maps.Clone(overrides)
	if len(u.Overrides) == 0 {
		u.Overrides = nil
	}
	u.OverriddenBy, u.OverriddenAt = by, d.now()
	if err := d.put(ctx, u); err != nil {
		return nil, 0, err
	}
	n, err := d.apply(ctx, u)
	return u, n, err
}

// apply gives every session of u its effective identity.
func (d *Directory) apply(ctx context.Context, u *DirectoryUser) (int, error) {
	found, err := d.sessions.Matching(ctx, func(x *Session) bool { return x.Identity.Subject == u.IdP.Subject })
	if err != nil {
		return 0, err
	}
	eff := u.Effective()
	n := 0
	var errs []error
	for _, s := range found {
		s.Identity = eff
		switch err := d.sessions.Update(ctx, s); {
		case err == nil:
			n++
		case !errors.Is(err, ErrNoSession):
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

func (d *Directory) put(ctx context.Context, u *DirectoryUser) error {
	b, err := json.Marshal(u)
	if err != nil {
		return err
	}
	if err := d.st.Put(ctx, bucketUsers, userKey(u.IdP.Subject), b, 0); err != nil {
		return fmt.Errorf("directory: store %q: %w", u.IdP.Subject, err)
	}
	return nil
}
