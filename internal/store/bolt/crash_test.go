package bolt

// Crash durability: a child process (this test binary, re-executed) writes to
// a store from several goroutines and reports every operation on stdout
// before it starts ("B") and after it returned nil ("A"). The parent kills it
// with SIGKILL at a random point, reopens the file and checks that bbolt's
// consistency check passes and that the store holds exactly what the
// acknowledged operations say — an operation that was in flight at the kill
// may or may not have happened, nothing else is allowed.
//
// Each worker goroutine owns its keys, so the order of its lines is the
// commit order for those keys. Values and TTLs are derived from (seed,
// worker, sequence number), so the parent recomputes them instead of reading
// them from the pipe. Rounds reuse one file: each round starts from a file
// the previous round crashed on, and re-checks every earlier round's keys.
//
// SIGKILL ends the process but not the kernel: written pages survive in the
// page cache. So this proves that commits are atomic, that a crashed file
// reopens clean, and that nothing is acknowledged before it is committed; it
// cannot prove that fsync reaches the disk (that needs a power cut).
// A seed reproduces the operations and the kill point; which operations are
// in flight at the kill depends on scheduling.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
)

const (
	crashEnvPath  = "ZTNA_BOLT_CRASH_CHILD" // set only in the child: the store file
	crashEnvSeed  = "ZTNA_BOLT_CRASH_SEED"  // child: the round seed; parent: optional base seed
	crashEnvRound = "ZTNA_BOLT_CRASH_ROUND" // child: the round number (key prefix)

	crashRounds  = 5
	crashBudget  = 20 * time.Second // whole test, all rounds
	crashWorkers = 4
	crashKeys    = 40   // keys per worker per round, reused, so keys are overwritten and deleted
	crashMaxOps  = 5000 // per worker; the parent kills long before

	crashKillMin = 200 // the kill comes after a random number of acks in [min, max]
	crashKillMax = 1000

	crashMaxValue  = 6 << 10 // values are 1 byte .. 6 KiB: many span overflow pages
	crashOpen      = 2 * time.Second
	crashLockProbe = 200 * time.Millisecond
	crashLineMax   = 512 // bound on one protocol line
	crashStderrMax = 64 << 10
)

var crashBuckets = []string{"sessions", "devices", "codes"}

// crashPayload is the value and ttl written by worker g's operation seq in
// the round with seed. A third of the entries never expire; the rest expire
// one to thirty days from now, far beyond the test.
func crashPayload(seed uint64, g, seq int) ([]byte, time.Duration) {
	r := rand.New(rand.NewPCG(seed^0x9e3779b97f4a7c15, uint64(g)<<32|uint64(seq)))
	v := make([]byte, 1+r.IntN(crashMaxValue))
	for i := 0; i < len(v); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(v[i:], w[:])
	}
	var ttl time.Duration
	if r.IntN(3) != 0 {
		ttl = 24*time.Hour + time.Duration(r.Int64N(int64(29*24*time.Hour)))
	}
	return v, ttl
}

func crashKey(round, g, i int) (bucket, key string) {
	return crashBuckets[i%len(crashBuckets)], fmt.Sprintf("r%d/g%d/k%02d", round, g, i)
}

// TestCrashChild is the writer process TestCrash starts and kills. Run by
// itself it has nothing to do.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnvPath)
	if path == "" {
		t.Skip("helper process for TestCrash: runs only as its child, with " + crashEnvPath + " set")
	}
	seed, err1 := strconv.ParseUint(os.Getenv(crashEnvSeed), 10, 64)
	round, err2 := strconv.Atoi(os.Getenv(crashEnvRound))
	if err := errors.Join(err1, err2); err != nil {
		crashChildFail("bad environment: %v", err)
	}
	// The parent holds stdin open; if it dies, stop rather than run on alone.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(3)
	}()

	s, err := Open(path, Options{Timeout: crashOpen})
	if err != nil {
		crashChildFail("open: %v", err)
	}
	var out sync.Mutex
	emit := func(format string, args ...any) {
		line := fmt.Sprintf(format+"\n", args...)
		out.Lock()
		defer out.Unlock()
		// One write per line (well under PIPE_BUF, so atomic), unbuffered: once
		// Write returns, the line survives our death in the pipe.
		if _, err := os.Stdout.WriteString(line); err != nil {
			os.Exit(5)
		}
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range crashWorkers {
		wg.Go(func() { crashWorker(ctx, s, emit, seed, round, g) })
	}
	wg.Wait()
	// Reaching this means the parent never killed us.
	emit("T all workers finished")
	os.Exit(4)
}

func crashChildFail(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "X "+format+"\n", args...)
	os.Exit(1)
}

// crashWorker runs a random mix of operations on its own keys, checking each
// result against its model of those keys.
func crashWorker(ctx context.Context, s *Store, emit func(string, ...any), seed uint64, round, g int) {
	r := rand.New(rand.NewPCG(seed, uint64(g)))
	have := make(map[int]int) // key index -> seq of its current value
	for seq := range crashMaxOps {
		i := r.IntN(crashKeys)
		bucket, key := crashKey(round, g, i)
		cur, present := have[i]
		op := "put"
		switch n := r.IntN(100); {
		case n < 35:
		case n < 55:
			op = "pia"
		case n < 75 && present:
			op = "take"
		case n < 75:
			op = "pia"
		default:
			op = "del"
		}
		value, ttl := crashPayload(seed, g, seq)
		emit("B %d %d %s %s %s", g, seq, op, bucket, key)
		fail := func(format string, args ...any) {
			emit("X worker %d seq %d %s %s/%s: %s", g, seq, op, bucket, key, fmt.Sprintf(format, args...))
			os.Exit(1)
		}
		switch op {
		case "put":
			if err := s.Put(ctx, bucket, key, value, ttl); err != nil {
				fail("%v", err)
			}
			have[i] = seq
		case "pia":
			stored, err := s.PutIfAbsent(ctx, bucket, key, value, ttl)
			if err != nil {
				fail("%v", err)
			}
			if stored == present {
				fail("stored = %v, but the key was present = %v", stored, present)
			}
			if stored {
				have[i] = seq
			}
		case "take":
			got, err := s.Take(ctx, bucket, key)
			if err != nil {
				fail("%v", err)
			}
			if want, _ := crashPayload(seed, g, cur); !bytes.Equal(got, want) {
				fail("got %d bytes, not the %d bytes of seq %d", len(got), len(want), cur)
			}
			delete(have, i)
		case "del":
			if err := s.Delete(ctx, bucket, key); err != nil {
				fail("%v", err)
			}
			delete(have, i)
		}
		emit("A %d %d", g, seq)
	}
}

// crashState is what one key holds: absent, or the value of (seed, g, seq).
type crashState struct {
	present bool
	seed    uint64
	g, seq  int
}

func (st crashState) String() string {
	if !st.present {
		return "absent"
	}
	return fmt.Sprintf("value of seq %d of worker %d", st.seq, st.g)
}

type crashKeyID struct{ bucket, key string }

type crashOp struct {
	g, seq int
	op     string
	k      crashKeyID
}

// apply returns the state of op.k after op, given its state before.
func (op crashOp) apply(before crashState, seed uint64) crashState {
	switch op.op {
	case "put":
		return crashState{present: true, seed: seed, g: op.g, seq: op.seq}
	case "pia":
		if before.present {
			return before
		}
		return crashState{present: true, seed: seed, g: op.g, seq: op.seq}
	default: // take, del
		return crashState{}
	}
}

// crashRun is the parent's view: what acknowledged operations left behind.
type crashRun struct {
	path  string
	model map[crashKeyID]crashState // after every acknowledged operation
	// maybe holds, for keys with an operation in flight at the kill, the
	// state that operation would leave; the key may hold either.
	maybe map[crashKeyID]crashState
}

func TestCrash(t *testing.T) {
	base := rand.Uint64()
	if s := os.Getenv(crashEnvSeed); s != "" {
		var err error
		if base, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", crashEnvSeed, s, err)
		}
	}
	t.Logf("base seed %d (rerun with %s=%d; round r uses seed+r)", base, crashEnvSeed, base)

	ctx, cancel := context.WithTimeout(t.Context(), crashBudget)
	defer cancel()
	run := &crashRun{
		path:  filepath.Join(t.TempDir(), "ztna.db"),
		model: make(map[crashKeyID]crashState),
	}
	begin := time.Now()
	for round := range crashRounds {
		if !run.round(ctx, t, round, base+uint64(round)) {
			t.Fatalf("round %d failed (base seed %d)", round, base)
		}
	}
	t.Logf("%d rounds in %v", crashRounds, time.Since(begin).Round(time.Millisecond))
}

// round runs one child, kills it, and verifies the file. It reports whether
// the round passed.
func (run *crashRun) round(ctx context.Context, t *testing.T, round int, seed uint64) bool {
	t.Helper()
	roundBegin := time.Now()
	killAt := crashKillMin + rand.New(rand.NewPCG(seed, 0)).IntN(crashKillMax-crashKillMin+1)

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(),
		crashEnvPath+"="+run.path,
		crashEnvSeed+"="+strconv.FormatUint(seed, 10),
		crashEnvRound+"="+strconv.Itoa(round),
	)
	stderr := &crashHead{max: crashStderrMax}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}

	inflight := make(map[int]crashOp) // per worker: begun, not yet acknowledged
	acks, killed, probed, ok := 0, false, false, true
	kill := func() {
		if !killed {
			killed = true
			if err := cmd.Process.Kill(); err != nil {
				t.Errorf("round %d: kill child: %v", round, err)
			}
		}
	}
	fail := func(format string, args ...any) {
		t.Errorf("round %d (seed %d): "+format, append([]any{round, seed}, args...)...)
		ok = false
		kill()
	}
	// Read to EOF: lines written before the kill are still in the pipe, and
	// every complete "A" line is an acknowledgement. A partial last line
	// (none expected: each line is one atomic write) is not.
	rd := bufio.NewReaderSize(stdout, crashLineMax)
	for {
		line, err := rd.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			fail("child wrote a line longer than %d bytes: %.80q", crashLineMax, line)
			_, _ = io.Copy(io.Discard, stdout)
			break
		}
		if err != nil {
			break
		}
		f := strings.Fields(string(line))
		switch {
		case len(f) == 6 && f[0] == "B":
			g, err1 := strconv.Atoi(f[1])
			seq, err2 := strconv.Atoi(f[2])
			if err := errors.Join(err1, err2); err != nil {
				fail("bad line %q: %v", line, err)
				continue
			}
			if prev, busy := inflight[g]; busy {
				fail("worker %d began seq %d before seq %d was acknowledged", g, seq, prev.seq)
			}
			inflight[g] = crashOp{g: g, seq: seq, op: f[3], k: crashKeyID{f[4], f[5]}}
		case len(f) == 3 && f[0] == "A":
			g, err1 := strconv.Atoi(f[1])
			seq, err2 := strconv.Atoi(f[2])
			op, busy := inflight[g]
			if err := errors.Join(err1, err2); err != nil || !busy || op.seq != seq {
				fail("acknowledgement %q matches no operation in flight (%v)", line, err)
				continue
			}
			delete(inflight, g)
			run.model[op.k] = op.apply(run.model[op.k], seed)
			acks++
			if !probed {
				// The child has the store open: a second opener must be
				// refused within its timeout, by the file lock.
				probed = true
				if err := probeLocked(run.path); err != nil {
					fail("%v", err)
				}
			}
			if acks == killAt {
				kill()
			}
		case len(f) > 0 && (f[0] == "X" || f[0] == "T"):
			fail("child: %s", strings.TrimSpace(string(line)))
		}
		// Anything else is the testing package's own output; ignore it.
	}
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		t.Errorf("round %d: out of the %v budget after %d acks (killed at %d)", round, crashBudget, acks, killAt)
		ok = false
	case !killed:
		t.Errorf("round %d: child exited by itself after %d acks: %v", round, acks, werr)
		ok = false
	case werr == nil:
		t.Errorf("round %d: child exited cleanly although it was killed", round)
		ok = false
	}
	if s := stderr.String(); strings.Contains(s, "DATA RACE") || !ok {
		t.Errorf("round %d: child stderr:\n%s", round, s)
		return false
	}

	run.maybe = make(map[crashKeyID]crashState, len(inflight))
	for _, op := range inflight {
		run.maybe[op.k] = op.apply(run.model[op.k], seed)
	}
	stats, verified := run.verify(t, round)
	t.Logf("round %d seed %d: killed at %d acks, %d acks read, %d ops in flight; %s; round took %v",
		round, seed, killAt, acks, len(inflight), stats, time.Since(roundBegin).Round(time.Millisecond))
	return verified
}

// probeLocked opens path while the child holds it and reports a problem if
// that does not fail clearly, with ErrLocked, within the timeout.
func probeLocked(path string) error {
	begin := time.Now()
	s, err := Open(path, Options{Timeout: crashLockProbe})
	elapsed := time.Since(begin)
	if err == nil {
		s.Close()
		return errors.New("a second process opened the store while the child held it")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "locked by another ztna process") {
		return fmt.Errorf("open of a locked store: %v, want ErrLocked", err)
	}
	if elapsed < crashLockProbe/2 || elapsed > crashLockProbe+2*time.Second {
		return fmt.Errorf("open of a locked store failed after %v, want about %v", elapsed, crashLockProbe)
	}
	return nil
}

// verify reopens the store after the crash and checks it against the
// model. On success it folds what in-flight operations did into the model,
// so later rounds expect exactly that.
func (run *crashRun) verify(t *testing.T, round int) (stats string, ok bool) {
	t.Helper()
	type opened struct {
		s   *Store
		err error
	}
	ch := make(chan opened, 1)
	begin := time.Now()
	go func() {
		s, err := Open(run.path, Options{Timeout: crashOpen})
		ch <- opened{s, err}
	}()
	var s *Store
	select {
	case o := <-ch:
		if o.err != nil {
			t.Errorf("round %d: reopen after the crash: %v", round, o.err)
			return "", false
		}
		s = o.s
	case <-time.After(crashOpen + 2*time.Second):
		t.Errorf("round %d: reopen after the crash did not return within %v", round, crashOpen+2*time.Second)
		return "", false
	}
	openTook := time.Since(begin)
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
			ok = false
		}
	}()
	ok = true
	errorf := func(format string, args ...any) {
		t.Errorf("round %d: "+format, append([]any{round}, args...)...)
		ok = false
	}

	// bbolt's own consistency check: page tree, freelist, key order.
	checkBegin := time.Now()
	var problems []error
	if err := s.db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			problems = append(problems, err)
		}
		return nil
	}); err != nil {
		errorf("consistency check: %v", err)
	}
	for _, p := range problems {
		errorf("consistency check: %v", p)
	}
	checkTook := time.Since(checkBegin)

	// Everything in the file, through the store's own read path.
	ctx := t.Context()
	seen := make(map[crashKeyID][]byte)
	for _, b := range crashBuckets {
		err := s.List(ctx, b, "", func(k string, v []byte) bool {
			seen[crashKeyID{b, k}] = v
			return true
		})
		if err != nil {
			errorf("list %s: %v", b, err)
		}
	}
	keys := make(map[crashKeyID]bool)
	for k := range seen {
		keys[k] = true
	}
	for k := range run.model {
		keys[k] = true
	}

	var present []crashKeyID
	for k := range keys {
		got, has := seen[k]
		allowed := []crashState{run.model[k]}
		if alt, ok := run.maybe[k]; ok {
			allowed = append(allowed, alt)
		}
		matched := -1
		for i, st := range allowed {
			if st.present != has {
				continue
			}
			if has {
				want, _ := crashPayload(st.seed, st.g, st.seq)
				if !bytes.Equal(got, want) {
					continue
				}
			}
			matched = i
			break
		}
		if matched < 0 {
			desc := "absent"
			if has {
				desc = fmt.Sprintf("%d bytes matching none of them", len(got))
			}
			errorf("%s/%s: want %v, found %s", k.bucket, k.key, allowed, desc)
			continue
		}
		run.model[k] = allowed[matched]
		if has {
			present = append(present, k)
		}
	}
	if len(present) == 0 {
		errorf("no entries survived at all; the test checked nothing")
	}

	// The read path a caller uses, and the expiry header of every entry.
	raw := make(map[crashKeyID][]byte, len(present))
	if err := s.db.View(func(tx *bbolt.Tx) error {
		for _, k := range present {
			b := tx.Bucket([]byte(k.bucket))
			if b == nil {
				return fmt.Errorf("bucket %s missing", k.bucket)
			}
			raw[k] = bytes.Clone(b.Get([]byte(k.key)))
		}
		return nil
	}); err != nil {
		errorf("read headers: %v", err)
	}
	now := time.Now()
	for _, k := range present {
		r, st := raw[k], run.model[k]
		want, ttl := crashPayload(st.seed, st.g, st.seq)
		if got, err := s.Get(ctx, k.bucket, k.key); err != nil || !bytes.Equal(got, want) {
			errorf("Get(%s/%s) = %d bytes, %v; want the %d bytes of %v", k.bucket, k.key, len(got), err, len(want), st)
		}
		if len(r) < headerLen {
			errorf("%s/%s: raw entry of %d bytes", k.bucket, k.key, len(r))
			continue
		}
		exp := int64(binary.BigEndian.Uint64(r[1:headerLen]))
		switch {
		case ttl == 0 && exp != 0:
			errorf("%s/%s: written without ttl, stored expiry %v", k.bucket, k.key, time.Unix(0, exp))
		case ttl > 0 && (exp <= now.UnixNano() || exp > now.Add(ttl).UnixNano()):
			errorf("%s/%s: written with ttl %v, stored expiry %v", k.bucket, k.key, ttl, time.Unix(0, exp))
		}
	}

	// The recovered file takes writes again.
	if err := s.Put(ctx, "recovered", "probe", []byte("ok"), 0); err != nil {
		errorf("write after recovery: %v", err)
	} else if got, err := s.Take(ctx, "recovered", "probe"); err != nil || string(got) != "ok" {
		errorf("read back after recovery = %q, %v", got, err)
	}

	return fmt.Sprintf("reopen %v, check %v, %d keys verified (%d present, %d from earlier rounds)",
		openTook.Round(time.Millisecond), checkTook.Round(time.Millisecond), len(keys), len(present),
		run.earlier(round)), ok
}

// earlier counts the model's keys written in rounds before round.
func (run *crashRun) earlier(round int) int {
	n := 0
	for k := range run.model {
		var r int
		if _, err := fmt.Sscanf(k.key, "r%d/", &r); err == nil && r < round {
			n++
		}
	}
	return n
}

// crashHead keeps the first max bytes written to it (a child's stderr).
type crashHead struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (w *crashHead) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (w *crashHead) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
