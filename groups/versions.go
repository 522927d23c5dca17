package groups

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/internal/store"
)

// Store-managed policy. With policy.source "store" the groups and app rules
// live in the shared store as numbered versions, each with its author and
// message: the console edits them, every version can be diffed with any
// other, and a revert is a new version with an old one's content. Nothing
// is ever rewritten; version N+1 is written only if it does not exist yet,
// so of two admins saving at once one gets ErrPolicyConflict.

// bucketPolicyVersions holds one record per version, keyed by its number
// zero-padded so that the store's key order is the version order;
// bucketPolicyHead holds the newest number under headKey, so that finding
// the newest version does not read them all. It is written after the
// version, so it may lag behind by a version whose writer died in between:
// Head rolls forward from it.
const (
	bucketPolicyVersions = "policy_versions"
	bucketPolicyHead     = "policy_head"
	headKey              = "head"
)

// Limits on stored policy history.
const (
	maxVersionMessage = 1024
	maxVersionsListed = 1000
)

// ErrPolicyConflict means another version was saved since the one an edit
// started from.
var ErrPolicyConflict = errors.New("the policy was changed meanwhile")

// ErrPolicyTooLarge means a policy does not fit in one store record.
var ErrPolicyTooLarge = errors.New("the policy is too large for the store")

// Version is one saved policy.
type Version struct {
	N       int       `json:"n"`
	Author  string    `json:"author"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
	// RevertOf is the version whose content this one restores (0: none).
	RevertOf int  `json:"revert_of,omitempty"`
	Policy   File `json:"policy"`
}

// Source returns the version's policy as a Source to compile.
func (v *Version) Source() *Source {
	var s Source
	s.AddGroups(nil, "groups", v.Policy.Groups)
	for i, ar := range v.Policy.Apps {
		s.AddApp(nil, fmt.Sprintf("apps[%d]", i), "app", ar)
	}
	return &s
}

// YAML renders the version's policy as a policy file.
func (v *Version) YAML() string { return FileYAML(&v.Policy) }

// FileYAML renders a policy file.
func FileYAML(f *File) string {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return "# " + err.Error() + "\n"
	}
	_ = enc.Close()
	return b.String()
}

// Versions is the store-managed policy history.
type Versions struct {
	st  store.Store
	now func() time.Time
}

// NewVersions returns the history kept in st.
func NewVersions(st store.Store) *Versions { return &Versions{st: st, now: time.Now} }

func versionKey(n int) string { return fmt.Sprintf("%010d", n) }

// Get returns version n, or store.ErrNotFound.
func (v *Versions) Get(ctx context.Context, n int) (*Version, error) {
	b, err := v.st.Get(ctx, bucketPolicyVersions, versionKey(n))
	if err != nil {
		return nil, err
	}
	var ver Version
	if err := json.Unmarshal(b, &ver); err != nil {
		return nil, fmt.Errorf("policy version %d: %w", n, err)
	}
	return &ver, nil
}

// Head returns the newest version, or store.ErrNotFound when none was saved.
func (v *Versions) Head(ctx context.Context) (*Version, error) {
	n := 0
	b, err := v.st.Get(ctx, bucketPolicyHead, headKey)
	switch {
	case err == nil:
		if n, err = strconv.Atoi(string(b)); err != nil || n < 0 {
			return nil, fmt.Errorf("policy versions: bad head %q", b)
		}
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("policy versions: %w", err)
	}
	// Roll forward over versions saved after the head was last written.
	for range maxVersionsListed {
		_, err := v.st.Get(ctx, bucketPolicyVersions, versionKey(n+1))
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("policy versions: %w", err)
		}
		n++
	}
	if n == 0 {
		return nil, store.ErrNotFound
	}
	return v.Get(ctx, n)
}

// List returns up to 1,000 versions, newest first, without their policies.
func (v *Versions) List(ctx context.Context) ([]*Version, error) {
	var out []*Version
	err := v.st.List(ctx, bucketPolicyVersions, "", func(_ string, b []byte) bool {
		var ver Version
		if json.Unmarshal(b, &ver) == nil {
			ver.Policy = File{}
			out = append(out, &ver)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("policy versions: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	if len(out) > maxVersionsListed {
		out = out[:maxVersionsListed]
	}
	return out, nil
}

// Commit saves p as the version after parent (0: the first version). The
// caller has compiled p; Commit checks only the history: it fails with
// ErrPolicyConflict when version parent+1 exists already.
func (v *Versions) Commit(ctx context.Context, parent int, p File, author, message string, revertOf int) (*Version, error) {
	message = strings.TrimSpace(message)
	if message == "" {
		return nil, errors.New("a change needs a message")
	}
	if len(message) > maxVersionMessage {
		return nil, fmt.Errorf("the message is longer than %d bytes", maxVersionMessage)
	}
	ver := &Version{N: parent + 1, Author: author, Message: message, At: v.now().UTC(), RevertOf: revertOf, Policy: p}
	b, err := json.Marshal(ver)
	if err != nil {
		return nil, err
	}
	if len(b) > store.MaxValueSize {
		return nil, fmt.Errorf("%w: %d bytes as stored, at most %d", ErrPolicyTooLarge, len(b), store.MaxValueSize)
	}
	ok, err := v.st.PutIfAbsent(ctx, bucketPolicyVersions, versionKey(ver.N), b, 0)
	if err != nil {
		return nil, fmt.Errorf("save policy version %d: %w", ver.N, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: version %d was saved by someone else; reload and redo the change", ErrPolicyConflict, ver.N)
	}
	// The version is saved; a head left behind by a failure here is
	// rolled forward by Head.
	_ = v.st.Put(ctx, bucketPolicyHead, headKey, []byte(strconv.Itoa(ver.N)), 0)
	return ver, nil
}
