package groups

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ztna-dev/ztna/internal/store"
	"github.com/ztna-dev/ztna/internal/store/memory"
)

func TestVersionsCommitHeadListRevert(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	defer st.Close()
	v := NewVersions(st)
	if _, err := v.Head(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Head of an empty history: %v, want ErrNotFound", err)
	}
	f1 := File{Groups: []Group{{Name: "finance", When: `user.department == "Finance"`}}}
	v1, err := v.Commit(ctx, 0, f1, "admin@example.com", "first", 0)
	if err != nil || v1.N != 1 {
		t.Fatalf("Commit 1: %v %+v", err, v1)
	}
	f2 := File{Groups: []Group{{Name: "finance", When: `user.department == "Finance" or user.title == "CFO"`}}}
	if _, err := v.Commit(ctx, 1, f2, "admin@example.com", "add the CFO", 0); err != nil {
		t.Fatal(err)
	}
	// A third commit from parent 1 lost the race: nothing is written.
	if _, err := v.Commit(ctx, 1, f1, "other@example.com", "stale", 0); !errors.Is(err, ErrPolicyConflict) {
		t.Fatalf("stale commit: %v, want ErrPolicyConflict", err)
	}
	head, err := v.Head(ctx)
	if err != nil || head.N != 2 || head.Message != "add the CFO" || head.Policy.Groups[0].When != f2.Groups[0].When {
		t.Fatalf("Head: %v %+v", err, head)
	}
	if _, err := v.Commit(ctx, 2, f1, "admin@example.com", "  ", 0); err == nil {
		t.Fatal("a commit without a message was accepted")
	}
	rv, err := v.Commit(ctx, 2, v1.Policy, "admin@example.com", "Revert to version 1", 1)
	if err != nil || rv.N != 3 || rv.RevertOf != 1 {
		t.Fatalf("revert: %v %+v", err, rv)
	}
	list, err := v.List(ctx)
	if err != nil || len(list) != 3 || list[0].N != 3 || list[2].N != 1 || len(list[0].Policy.Groups) != 0 {
		t.Fatalf("List: %v %+v", err, list)
	}
	got, err := v.Get(ctx, 3)
	if err != nil || got.YAML() != v1.YAML() {
		t.Fatalf("version 3 does not restore version 1: %v\n%s\n%s", err, got.YAML(), v1.YAML())
	}
	if _, err := Compile(got.Source(), Options{}); err != nil {
		t.Fatalf("a stored version does not compile: %v", err)
	}
	if !strings.Contains(got.YAML(), "user.department == \"Finance\"") {
		t.Fatalf("YAML: %s", got.YAML())
	}
}

// Of many admins saving from the same version at once, exactly one wins.
func TestVersionsConcurrentCommitsOneWins(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	defer st.Close()
	v := NewVersions(st)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, lost := 0, 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Commit(ctx, 0, File{}, "a", "race", 0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.Is(err, ErrPolicyConflict):
				lost++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || lost != 15 {
		t.Fatalf("won %d lost %d, want 1 and 15", won, lost)
	}
}

func TestVersionsRefuseOversizedPolicy(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	defer st.Close()
	v := NewVersions(st)
	big := File{Groups: []Group{{Name: "big", Members: make([]string, 0, 40000)}}}
	for i := 0; i < 40000; i++ {
		big.Groups[0].Members = append(big.Groups[0].Members, "user-with-a-long-identifier-"+strings.Repeat("x", 8))
	}
	if _, err := v.Commit(ctx, 0, big, "a", "huge", 0); !errors.Is(err, ErrPolicyTooLarge) {
		t.Fatalf("oversized policy: %v, want ErrPolicyTooLarge", err)
	}
	if _, err := v.Head(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an oversized policy was stored: %v", err)
	}
}

// A head pointer left behind (a writer that died between saving a version
// and moving the head, or two writers moving it out of order) is rolled
// forward: Head is always the newest saved version.
func TestVersionsHeadRollsForward(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	defer st.Close()
	v := NewVersions(st)
	for i := range 3 {
		if _, err := v.Commit(ctx, i, File{}, "a", "change", 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, head := range []string{"1", ""} {
		if head == "" {
			if err := st.Delete(ctx, bucketPolicyHead, headKey); err != nil {
				t.Fatal(err)
			}
		} else if err := st.Put(ctx, bucketPolicyHead, headKey, []byte(head), 0); err != nil {
			t.Fatal(err)
		}
		if h, err := v.Head(ctx); err != nil || h.N != 3 {
			t.Fatalf("head pointer %q: Head %v %+v, want version 3", head, err, h)
		}
	}
	if err := st.Put(ctx, bucketPolicyHead, headKey, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Head(ctx); err == nil {
		t.Fatal("a corrupt head pointer was accepted")
	}
}
