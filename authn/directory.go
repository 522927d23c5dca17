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

// The directory's two buckets, one record of each per user, keyed by the
// hash of the OIDC subject. What the IdP says and what admins set are
// kept apart, so that a sign-in or token refresh, which rewrites the
// first, can never undo an admin's change to the second.
const (
	bucketUsers     = "users"          // userRecord
	bucketOverrides = "user_overrides" // overridesRecord
)

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
	IdP Identity
	// Overrides are attributes set in the console. They win over the IdP's
	// until cleared; an empty value hides the IdP's attribute.
	Overrides map[string]string
	// OverriddenBy and OverriddenAt say who last changed Overrides.
	OverriddenBy string
	OverriddenAt time.Time
	FirstSeen    time.Time // zero: provisioned, never signed in
	LastSeen     time.Time
}

// userRecord is what the IdP said of a user, and when.
type userRecord struct {
	IdP       Identity  `json:"idp"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
}

// overridesRecord is what admins set on a user. At also stamps the
// version, for Settle.
type overridesRecord struct {
	Overrides map[string]string `json:"overrides,omitempty"`
	By        string            `json:"by"`
	At        time.Time         `json:"at"`
}

// Effective is the identity the policy sees: the IdP's with the overrides
// applied.
func (u *DirectoryUser) Effective() Identity { return effective(u.IdP, u.Overrides) }

func effective(id Identity, overrides map[string]string) Identity {
	if len(overrides) == 0 {
		return id
	}
	id.Attributes = maps.Clone(id.Attributes)
	if id.Attributes == nil {
		id.Attributes = map[string]string{}
	}
	for k, v := range overrides {
		if v == "" {
			delete(id.Attributes, k)
		} else {
			id.Attributes[k] = v
		}
	}
	return id
}

func (u *DirectoryUser) merge(r userRecord, o *overridesRecord) {
	u.IdP, u.FirstSeen, u.LastSeen = r.IdP, r.FirstSeen, r.LastSeen
	if o != nil {
		u.Overrides, u.OverriddenBy, u.OverriddenAt = o.Overrides, o.By, o.At
	}
}

// Directory records the users the edge has seen and the attributes admins
// set on them, in the store shared by every replica. Sessions carry the
// effective identity: login and refresh pass the IdP's identity through
// Seen (and Settle once the session is stored), and SetOverrides rewrites
// the user's sessions, whose update moves their live connections at once
// on every replica.
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
	var r userRecord
	if err := d.read(ctx, bucketUsers, sub, &r); err != nil {
		return nil, err
	}
	o, err := d.overrides(ctx, sub)
	if err != nil {
		return nil, err
	}
	u := &DirectoryUser{}
	u.merge(r, o)
	return u, nil
}

// overrides reads what admins set on sub; nil when nothing.
func (d *Directory) overrides(ctx context.Context, sub string) (*overridesRecord, error) {
	var o overridesRecord
	err := d.read(ctx, bucketOverrides, sub, &o)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &o, nil
}

func (d *Directory) read(ctx context.Context, bucket, sub string, v any) error {
	b, err := d.st.Get(ctx, bucket, userKey(sub))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("directory record of %q: %w", sub, err)
	}
	return nil
}

func (d *Directory) write(ctx context.Context, bucket, sub string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := d.st.Put(ctx, bucket, userKey(sub), b, 0); err != nil {
		return fmt.Errorf("directory: store %q: %w", sub, err)
	}
	return nil
}

// Seen records id as the IdP's current assertion about its user and
// returns the effective identity, with the stamp of the overrides it
// applied: once the session carrying that identity is stored, pass both
// to Settle. A store error is returned with the IdP's identity unchanged,
// so the caller decides whether to go on.
func (d *Directory) Seen(ctx context.Context, id Identity) (Identity, time.Time, error) {
	if d == nil {
		return id, time.Time{}, nil
	}
	now := d.now()
	var r userRecord
	if err := d.read(ctx, bucketUsers, id.Subject, &r); err != nil && !errors.Is(err, store.ErrNotFound) {
		return id, time.Time{}, err
	}
	if r.FirstSeen.IsZero() {
		r.FirstSeen = now // new, or provisioned before: this is the first sign-in
	}
	r.IdP, r.LastSeen = id, now
	if err := d.write(ctx, bucketUsers, id.Subject, &r); err != nil {
		return id, time.Time{}, err
	}
	o, err := d.overrides(ctx, id.Subject)
	if err != nil || o == nil {
		return id, time.Time{}, err
	}
	return effective(id, o.Overrides), o.At, nil
}

// Settle closes the race between a sign-in or refresh and an admin's
// attribute change: called after s, carrying the identity Seen returned
// for idp with stamp, was stored, it rewrites s if the overrides changed
// since Seen read them. (SetOverrides writes the overrides before it
// lists the sessions to rewrite, and Settle reads them after the session
// was written, so one of the two sees the other.)
func (d *Directory) Settle(ctx context.Context, s *Session, idp Identity, stamp time.Time) error {
	if d == nil {
		return nil
	}
	o, err := d.overrides(ctx, idp.Subject)
	if err != nil {
		return err
	}
	var at time.Time
	var attrs map[string]string
	if o != nil {
		at, attrs = o.At, o.Overrides
	}
	if at.Equal(stamp) {
		return nil
	}
	s.Identity = effective(idp, attrs)
	return d.sessions.Update(ctx, s)
}

// Provision records a user known from elsewhere (a directory sync, the
// dev IdP's demo users) before they sign in, so that group previews and
// what-if questions can include them. A user already recorded is left as
// is; their first sign-in replaces the provisioned identity with the
// IdP's.
func (d *Directory) Provision(ctx context.Context, id Identity) error {
	var r userRecord
	err := d.read(ctx, bucketUsers, id.Subject, &r)
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return d.write(ctx, bucketUsers, id.Subject, &userRecord{IdP: id})
}

// List returns up to MaxDirectoryUsers users, by email then subject.
func (d *Directory) List(ctx context.Context) ([]*DirectoryUser, error) {
	overrides := map[string]*overridesRecord{}
	err := d.st.List(ctx, bucketOverrides, "", func(k string, v []byte) bool {
		var o overridesRecord
		if json.Unmarshal(v, &o) == nil {
			overrides[k] = &o
		}
		return len(overrides) < MaxDirectoryUsers
	})
	if err != nil {
		return nil, fmt.Errorf("list user overrides: %w", err)
	}
	var out []*DirectoryUser
	err = d.st.List(ctx, bucketUsers, "", func(k string, v []byte) bool {
		var r userRecord
		if json.Unmarshal(v, &r) == nil {
			u := &DirectoryUser{}
			u.merge(r, overrides[k])
			out = append(out, u)
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
	o := overridesRecord{Overrides: maps.Clone(overrides), By: by, At: d.now().UTC()}
	if len(o.Overrides) == 0 {
		o.Overrides = nil
	}
	if err := d.write(ctx, bucketOverrides, sub, &o); err != nil {
		return nil, 0, err
	}
	u.Overrides, u.OverriddenBy, u.OverriddenAt = o.Overrides, o.By, o.At
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
