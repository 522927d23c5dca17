//go:build linux

package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// --- EDR: real processes -------------------------------------------------

// edrName returns a process name no other process on the machine uses (13
// characters, under the kernel's 15-character command name limit).
func edrName(t *testing.T) string {
	t.Helper()
	return "zedr-" + rand.Text()[:8]
}

// copyExecutable copies src to dst (mode 0755), appending extra bytes, which
// changes the file's hash but not how it runs.
func copyExecutable(t *testing.T, src, dst string, extra []byte) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	data = append(data, extra...)
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return fileSHA256(t, dst)
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// sleepBinary is the real program the tests run as a stand-in EDR sensor.
func sleepBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("these tests need the sleep binary: %v", err)
	}
	p, err = filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	// A multi-call binary (busybox, uutils) would not run under another
	// name, and renaming it is the point of these tests.
	if filepath.Base(p) != "sleep" {
		t.Fatalf("sleep is %s, a multi-call binary; these tests need a standalone sleep (GNU coreutils)", p)
	}
	return p
}

// startProcess starts path (os/exec returns once the new program has been
// exec'd, so /proc already shows it) and kills it when the test ends.
func startProcess(t *testing.T, path string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(path, "600")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func edrCollector(names ...string) *Collector {
	return New(Config{Timeout: 2 * time.Second, EDR: []EDRConfig{{Name: "sensor", ProcessNames: names}}})
}

func TestEDRRunningProcess(t *testing.T) {
	name := edrName(t)
	path := filepath.Join(t.TempDir(), name)
	want := copyExecutable(t, sleepBinary(t), path, nil)
	cmd := startProcess(t, path)

	st := collectOne(t, edrCollector("some-other-name", name))
	if !st.Running || st.PID != cmd.Process.Pid {
		t.Fatalf("Running=%v PID=%d, want true and %d", st.Running, st.PID, cmd.Process.Pid)
	}
	if st.ExePath != path {
		t.Errorf("ExePath = %q, want %q", st.ExePath, path)
	}
	if st.ExeSHA256 != want {
		t.Errorf("ExeSHA256 = %q, want %q", st.ExeSHA256, want)
	}
	if st.Name != "sensor" || st.ManagerAddr != "" || st.ManagerError != "" || !st.ManagerLastReached.IsZero() {
		t.Errorf("unexpected fields without a manager: %+v", st)
	}
}

// TestEDRLongProcessName: the kernel keeps 15 characters of a command name;
// a longer configured name still matches through the executable's name.
func TestEDRLongProcessName(t *testing.T) {
	name := edrName(t) + "-long-sensor-name"
	path := filepath.Join(t.TempDir(), name)
	want := copyExecutable(t, sleepBinary(t), path, nil)
	cmd := startProcess(t, path)

	st := collectOne(t, edrCollector(name))
	if !st.Running || st.PID != cmd.Process.Pid || st.ExeSHA256 != want {
		t.Fatalf("got Running=%v PID=%d hash=%q, want true %d %q", st.Running, st.PID, st.ExeSHA256, cmd.Process.Pid, want)
	}
}

// TestEDRFakeFile is seed bypass (1a): the install's file exists but
// nothing runs it.
func TestEDRFakeFile(t *testing.T) {
	name := edrName(t)
	copyExecutable(t, sleepBinary(t), filepath.Join(t.TempDir(), name), nil)

	st := collectOne(t, edrCollector(name))
	if st.Running || st.PID != 0 || st.ExePath != "" || st.ExeSHA256 != "" {
		t.Fatalf("file without a process reported as %+v", st)
	}
}

// TestEDRRenamedDummy is seed bypass (1b): a different program runs under
// the EDR's name. It is found, but its hash is that of the dummy, which the
// edge's allow-list (holding the real sensor's hash) rejects.
func TestEDRRenamedDummy(t *testing.T) {
	dir := t.TempDir()
	name := edrName(t)
	genuine := copyExecutable(t, sleepBinary(t), filepath.Join(dir, "genuine"), nil)
	dummyPath := filepath.Join(dir, name)
	dummy := copyExecutable(t, sleepBinary(t), dummyPath, []byte("not the real sensor"))
	if dummy == genuine {
		t.Fatal("test setup: dummy and genuine hashes are equal")
	}
	cmd := startProcess(t, dummyPath)

	st := collectOne(t, edrCollector(name))
	if !st.Running || st.PID != cmd.Process.Pid {
		t.Fatalf("dummy not found: %+v", st)
	}
	if st.ExeSHA256 != dummy {
		t.Errorf("ExeSHA256 = %q, want the dummy's %q (allow-listed genuine is %q)", st.ExeSHA256, dummy, genuine)
	}
}

// TestEDRHashOfRunningImage: replacing the file on disk after the process
// started must not change the reported hash, which comes from the image the
// process runs (/proc/PID/exe), not from the path.
func TestEDRHashOfRunningImage(t *testing.T) {
	dir := t.TempDir()
	name := edrName(t)
	path := filepath.Join(dir, name)
	dummy := copyExecutable(t, sleepBinary(t), path, []byte("dummy"))
	startProcess(t, path)

	// Swap in the "genuine" bytes under the same path (a running
	// executable cannot be written in place, but can be renamed over).
	genuine := copyExecutable(t, sleepBinary(t), filepath.Join(dir, "genuine.tmp"), nil)
	if err := os.Rename(filepath.Join(dir, "genuine.tmp"), path); err != nil {
		t.Fatal(err)
	}
	if fileSHA256(t, path) != genuine {
		t.Fatal("test setup: swap did not happen")
	}

	st := collectOne(t, edrCollector(name))
	if !st.Running {
		t.Fatalf("process not found after swap: %+v", st)
	}
	if st.ExeSHA256 != dummy {
		t.Errorf("ExeSHA256 = %q, want the running image's %q (the file on disk is now %q)", st.ExeSHA256, dummy, genuine)
	}
	if want := path + " (deleted)"; st.ExePath != want {
		t.Errorf("ExePath = %q, want %q", st.ExePath, want)
	}
}

// TestEDRKilledOrFrozen: a killed sensor whose zombie lingers, or one frozen
// with SIGSTOP, is not running.
func TestEDRKilledOrFrozen(t *testing.T) {
	name := edrName(t)
	path := filepath.Join(t.TempDir(), name)
	copyExecutable(t, sleepBinary(t), path, nil)
	cmd := startProcess(t, path)
	pid := cmd.Process.Pid
	c := edrCollector(name)

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitProcState(t, pid, "T")
	if st := collectOne(t, c); st.Running {
		t.Errorf("stopped sensor reported running: %+v", st)
	}

	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitProcState(t, pid, "RSD")
	if st := collectOne(t, c); !st.Running || st.PID != pid {
		t.Errorf("resumed sensor not running: %+v", st)
	}

	// Killed but not yet reaped (no Wait): a zombie keeps its name.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitProcState(t, pid, "Z")
	if st := collectOne(t, c); st.Running {
		t.Errorf("zombie sensor reported running: %+v", st)
	}
}

// waitProcState polls /proc/PID/stat until the state is one of states.
func waitProcState(t *testing.T, pid int, states string) {
	t.Helper()
	c := New(Config{})
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := c.readProcStat(pid)
		if err == nil && strings.IndexByte(states, st.State) >= 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: state %q (err %v), want one of %q", pid, st.State, err, states)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEDRLowestPIDWins(t *testing.T) {
	name := edrName(t)
	path := filepath.Join(t.TempDir(), name)
	copyExecutable(t, sleepBinary(t), path, nil)
	a, b := startProcess(t, path), startProcess(t, path)
	want := min(a.Process.Pid, b.Process.Pid)
	c := edrCollector(name)
	for range 3 {
		if st := collectOne(t, c); st.PID != want {
			t.Fatalf("PID = %d, want the lowest %d", st.PID, want)
		}
	}
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		in      string
		want    procStat
		wantErr bool
	}{
		{"1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 27 100 200\n", procStat{"systemd", 'S', 27}, false},
		{"7 (a) (b) x) R 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 99 100 200", procStat{"a) (b) x", 'R', 99}, false},
		{"7 (short) R 0 1", procStat{}, true},
		{"garbage", procStat{}, true},
	}
	for _, tt := range tests {
		got, err := parseProcStat([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v, err=%v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// --- fake filesystem trees ----------------------------------------------

// writeTree creates files under root. A value starting with "->" makes a
// symlink to the rest; a key ending in "/" makes a directory.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeRootCollector collects from a fake tree with no firewall tools and no
// desktop session, so only the file-based facts vary.
func fakeRootCollector(t *testing.T, root string) *Collector {
	t.Helper()
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	c := New(Config{Root: root, Timeout: 2 * time.Second})
	c.binPaths = map[string]string{"nft": "", "iptables": "", "gsettings": ""}
	return c
}

func TestOSInfoFromFakeRoot(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		want    OS
		wantErr string
	}{
		{
			name: "debian",
			files: map[string]string{
				"etc/os-release":            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
				"proc/sys/kernel/osrelease": "6.1.0-18-amd64\n",
			},
			want: OS{Name: "Debian GNU/Linux", Version: "12", Kernel: "6.1.0-18-amd64"},
		},
		{
			name: "quoting and comments",
			files: map[string]string{
				"etc/os-release":            "# comment\n\nNAME='Fedora Linux'\nVERSION_ID=40\nVARIANT=\"Work\\\"station\\\"\"\n",
				"proc/sys/kernel/osrelease": "6.8.5-301.fc40.x86_64",
			},
			want: OS{Name: "Fedora Linux", Version: "40", Kernel: "6.8.5-301.fc40.x86_64"},
		},
		{
			name: "usr lib fallback, rolling release without version",
			files: map[string]string{
				"usr/lib/os-release":        "NAME=\"Arch Linux\"\nBUILD_ID=rolling\n",
				"proc/sys/kernel/osrelease": "6.9.1-arch1-1\n",
			},
			want: OS{Name: "Arch Linux", Kernel: "6.9.1-arch1-1"},
		},
		{
			name:    "no os-release",
			files:   map[string]string{"proc/sys/kernel/osrelease": "6.9.1\n"},
			want:    OS{Kernel: "6.9.1"},
			wantErr: "os-release",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			f, err := fakeRootCollector(t, root).Collect(t.Context())
			tt.want.Arch = runtimeArch()
			if f.OS != tt.want {
				t.Errorf("OS = %+v, want %+v", f.OS, tt.want)
			}
			var osErr error
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					if strings.HasPrefix(e.Error(), "os:") {
						osErr = e
					}
				}
			}
			if tt.wantErr == "" && osErr != nil {
				t.Errorf("unexpected os error: %v", osErr)
			}
			if tt.wantErr != "" && (osErr == nil || !strings.Contains(osErr.Error(), tt.wantErr)) {
				t.Errorf("os error = %v, want one containing %q", osErr, tt.wantErr)
			}
		})
	}
}

func TestDiskEncryptionFromFakeRoot(t *testing.T) {
	const (
		procMounts = "21 26 0:20 / /proc rw,relatime - proc proc rw\n"
		crypt      = "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-luks-root\n"
	)
	mountinfo := func(lines ...string) string { return procMounts + strings.Join(lines, "\n") + "\n" }
	yes, no := boolPtr(true), boolPtr(false)
	tests := []struct {
		name    string
		files   map[string]string
		want    *bool
		wantErr bool
	}{
		{
			name: "plain partition",
			files: map[string]string{
				"proc/self/mountinfo":    mountinfo("26 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw"),
				"sys/dev/block/254:1/":   "",
				"sys/dev/block/254:1/ro": "0\n",
			},
			want: no,
		},
		{
			name: "luks directly",
			files: map[string]string{
				"proc/self/mountinfo":                mountinfo("26 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw"),
				"sys/dev/block/253:0/dm/uuid":        crypt,
				"sys/dev/block/253:0/slaves/vda2/ro": "0\n",
			},
			want: yes,
		},
		{
			name: "lvm on luks (sysfs symlinks)",
			files: map[string]string{
				"proc/self/mountinfo":                        mountinfo("26 1 253:1 / / rw - xfs /dev/mapper/vg-root rw"),
				"sys/dev/block/253:1":                        "->../../devices/virtual/block/dm-1",
				"sys/devices/virtual/block/dm-1/dm/uuid":     "LVM-abcdef\n",
				"sys/devices/virtual/block/dm-1/slaves/dm-0": "->../../dm-0",
				"sys/devices/virtual/block/dm-0/dm/uuid":     crypt,
				"sys/devices/virtual/block/dm-0/slaves/vda2": "->../../../../pci0000:00/block/vda/vda2",
				"sys/devices/pci0000:00/block/vda/vda2/ro":   "0\n",
			},
			want: yes,
		},
		{
			name: "lvm on plain disk",
			files: map[string]string{
				"proc/self/mountinfo":                mountinfo("26 1 253:1 / / rw - ext4 /dev/mapper/vg-root rw"),
				"sys/dev/block/253:1/dm/uuid":        "LVM-abcdef\n",
				"sys/dev/block/253:1/slaves/vda2/ro": "0\n",
			},
			want: no,
		},
		{
			name: "lvm spanning an encrypted and a plain disk",
			files: map[string]string{
				"proc/self/mountinfo":                     mountinfo("26 1 253:1 / / rw - ext4 /dev/mapper/vg-root rw"),
				"sys/dev/block/253:1/dm/uuid":             "LVM-abcdef\n",
				"sys/dev/block/253:1/slaves/dm-0/dm/uuid": crypt,
				"sys/dev/block/253:1/slaves/vdb1/ro":      "0\n",
			},
			want: no,
		},
		{
			name: "btrfs anonymous device on luks via source path",
			files: map[string]string{
				"proc/self/mountinfo":          mountinfo("26 1 0:31 /@ / rw - btrfs /dev/mapper/root rw,subvol=/@"),
				"dev/mapper/root":              "->../dm-0",
				"dev/dm-0":                     "",
				"sys/class/block/dm-0/dm/uuid": crypt,
			},
			want: yes,
		},
		{
			name: "last root mount wins",
			files: map[string]string{
				"proc/self/mountinfo": mountinfo(
					"26 1 253:0 / / rw - ext4 /dev/mapper/root rw",
					"40 26 254:1 / / rw - ext4 /dev/vda1 rw",
				),
				"sys/dev/block/253:0/dm/uuid": crypt,
				"sys/dev/block/254:1/ro":      "0\n",
			},
			want: no,
		},
		{
			name: "mount point with escaped space is not root",
			files: map[string]string{
				"proc/self/mountinfo":         mountinfo("26 1 253:0 / / rw - ext4 /dev/mapper/root rw", "41 26 254:1 / /\\040 rw - ext4 /dev/vda1 rw"),
				"sys/dev/block/253:0/dm/uuid": crypt,
			},
			want: yes,
		},
		{
			name:  "overlay root is unknown",
			files: map[string]string{"proc/self/mountinfo": mountinfo("26 1 0:50 / / rw - overlay overlay rw,lowerdir=/a")},
			want:  nil,
		},
		{
			name:    "no mountinfo",
			files:   map[string]string{"etc/hostname": "x\n"},
			want:    nil,
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			f, err := fakeRootCollector(t, root).Collect(t.Context())
			if !equalBoolPtr(f.DiskEncrypted, tt.want) {
				t.Errorf("DiskEncrypted = %s, want %s", fmtBoolPtr(f.DiskEncrypted), fmtBoolPtr(tt.want))
			}
			gotErr := err != nil && strings.Contains(err.Error(), "disk encryption:")
			if gotErr != tt.wantErr {
				t.Errorf("disk encryption error = %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

func equalBoolPtr(a, b *bool) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func fmtBoolPtr(b *bool) string {
	if b == nil {
		return "unknown"
	}
	return strconv.FormatBool(*b)
}

// --- firewall and screen lock through real commands ----------------------

// script writes an executable shell script standing in for a system tool.
// The collector runs it directly (exec, not through a shell of its own).
func script(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// printTool is a tool that checks its arguments and prints out.
func printTool(t *testing.T, name, wantArgs, out string) string {
	t.Helper()
	data := filepath.Join(t.TempDir(), name+".out")
	if err := os.WriteFile(data, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return script(t, name, `[ "$*" = "`+wantArgs+`" ] || { echo "bad args: $*" >&2; exit 2; }
cat '`+data+`'`)
}

func TestFirewall(t *testing.T) {
	const (
		nftEmptyInput = `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
			{"table": {"family": "inet", "name": "filter", "handle": 1}},
			{"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
			{"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]}`
		nftInputDrop = `{"nftables": [{"table": {"family": "inet", "name": "filter", "handle": 1}},
			{"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}]}`
		nftInputRule = `{"nftables": [{"table": {"family": "ip", "name": "firewalld", "handle": 1}},
			{"chain": {"family": "ip", "table": "firewalld", "name": "filter_INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}},
			{"rule": {"family": "ip", "table": "firewalld", "chain": "filter_INPUT", "handle": 5, "expr": [{"reject": null}]}}]}`
		nftForwardOnly = `{"nftables": [{"table": {"family": "ip", "name": "nat", "handle": 1}},
			{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
			{"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
			{"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 5, "expr": [{"jump": {"target": "DOCKER"}}]}}]}`
		iptDefault = "-P INPUT ACCEPT\n"
		iptRules   = "-P INPUT ACCEPT\n-A INPUT -j ufw-before-input\n"
		iptDrop    = "-P INPUT DROP\n"
	)
	nft := func(out string) func(*testing.T) string {
		return func(t *testing.T) string { return printTool(t, "nft", "-j list ruleset", out) }
	}
	ipt := func(out string) func(*testing.T) string {
		return func(t *testing.T) string { return printTool(t, "iptables", "-S INPUT", out) }
	}
	failing := func(t *testing.T) string { return script(t, "tool", `echo "Operation not permitted" >&2; exit 1`) }
	absent := func(*testing.T) string { return "" }

	tests := []struct {
		name     string
		nft, ipt func(*testing.T) string
		want     *bool
		wantErr  string
	}{
		{"nft input policy drop", nft(nftInputDrop), absent, boolPtr(true), ""},
		{"nft input rule", nft(nftInputRule), ipt(iptDefault), boolPtr(true), ""},
		{"nft empty ruleset, iptables default", nft(""), ipt(iptDefault), boolPtr(false), ""},
		{"nft accept-only chains", nft(nftEmptyInput), absent, boolPtr(false), ""},
		{"forwarding rules only (docker) are not a host firewall", nft(nftForwardOnly), ipt(iptDefault), boolPtr(false), ""},
		{"legacy iptables rules invisible to nft", nft(nftEmptyInput), ipt(iptRules), boolPtr(true), ""},
		{"iptables drop policy", absent, ipt(iptDrop), boolPtr(true), ""},
		{"no tools", absent, absent, nil, ""},
		{"tool fails, other says none", failing, ipt(iptDefault), nil, "Operation not permitted"},
		{"tool fails, other says active", failing, ipt(iptRules), boolPtr(true), ""},
		{"unparseable nft output", nft("{not json"), ipt(iptDefault), nil, "parse ruleset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{Timeout: 5 * time.Second})
			c.binPaths = map[string]string{"nft": tt.nft(t), "iptables": tt.ipt(t)}
			got, err := c.firewallActive(t.Context())
			if !equalBoolPtr(got, tt.want) {
				t.Errorf("firewallActive = %s, want %s (err %v)", fmtBoolPtr(got), fmtBoolPtr(tt.want), err)
			}
			if tt.wantErr == "" && err != nil {
				t.Errorf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestScreenLock(t *testing.T) {
	gsettings := func(lock, delay string) func(*testing.T) string {
		return func(t *testing.T) string {
			return script(t, "gsettings", `case "$*" in
"get org.gnome.desktop.screensaver lock-enabled") echo '`+lock+`' ;;
"get org.gnome.desktop.session idle-delay") echo '`+delay+`' ;;
*) echo "bad args: $*" >&2; exit 2 ;;
esac`)
		}
	}
	noSchema := func(t *testing.T) string {
		return script(t, "gsettings", `echo 'No such schema "org.gnome.desktop.screensaver"' >&2; exit 1`)
	}
	tests := []struct {
		name    string
		bus     string
		tool    func(*testing.T) string
		want    *bool
		wantErr bool
	}{
		{"locks after idle", "unix:path=/run/user/1000/bus", gsettings("true", "uint32 300"), boolPtr(true), false},
		{"lock disabled", "unix:path=/run/user/1000/bus", gsettings("false", "uint32 300"), boolPtr(false), false},
		{"never idles", "unix:path=/run/user/1000/bus", gsettings("true", "uint32 0"), boolPtr(false), false},
		{"not gnome", "unix:path=/run/user/1000/bus", noSchema, nil, false},
		{"garbage", "unix:path=/run/user/1000/bus", gsettings("maybe", "uint32 0"), nil, true},
		{"system service sees no user session", "", gsettings("true", "uint32 300"), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DBUS_SESSION_BUS_ADDRESS", tt.bus)
			c := New(Config{Timeout: 5 * time.Second})
			c.binPaths = map[string]string{"gsettings": tt.tool(t)}
			got, err := c.screenLock(t.Context())
			if !equalBoolPtr(got, tt.want) || (err != nil) != tt.wantErr {
				t.Errorf("screenLock = %s, %v; want %s, error: %v", fmtBoolPtr(got), err, fmtBoolPtr(tt.want), tt.wantErr)
			}
		})
	}
}

// TestCommandTimeout: a hanging tool (here one that also leaves a child
// holding its output open) costs at most the per-command timeout, and the
// fact stays unknown.
func TestCommandTimeout(t *testing.T) {
	hang := script(t, "nft", "sleep 8 &\nexec sleep 60")
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	c := New(Config{Timeout: 200 * time.Millisecond})
	c.binPaths = map[string]string{"nft": hang, "iptables": ""}

	start := time.Now()
	f, err := c.Collect(t.Context())
	elapsed := time.Since(start)
	if f.FirewallActive != nil {
		t.Errorf("FirewallActive = %v, want unknown", *f.FirewallActive)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "firewall: nft") {
		t.Errorf("err = %v, want the firewall's deadline", err)
	}
	// 200ms timeout + 500ms wait for the orphaned child's pipe, with room
	// for a loaded machine; the tool would hang 60s and its child 8s.
	if elapsed > 5*time.Second {
		t.Errorf("Collect took %v with a 200ms command timeout", elapsed)
	}
	// Other facts are still collected.
	if f.OS.Kernel == "" {
		t.Errorf("kernel missing from partial facts")
	}
}

// TestLookPathIgnoresPATH: a tool planted first in $PATH is not run.
func TestLookPathIgnoresPATH(t *testing.T) {
	fake := script(t, "nft", `echo '{"nftables":[{"chain":{"family":"inet","table":"t","name":"i","hook":"input","policy":"drop"}}]}'`)
	t.Setenv("PATH", filepath.Dir(fake)+":"+os.Getenv("PATH"))
	c := New(Config{})
	if p, err := c.lookPath("nft"); err == nil && p == fake {
		t.Fatalf("lookPath(nft) = %s, the planted tool", p)
	}
	p, err := c.lookPath("sleep")
	if err != nil || !strings.HasPrefix(p, "/") || filepath.Dir(p) == filepath.Dir(fake) {
		t.Fatalf("lookPath(sleep) = %q, %v; want a system path", p, err)
	}
	if _, err := c.lookPath("zz-no-such-tool"); !errors.Is(err, errNotInstalled) {
		t.Fatalf("missing tool: err = %v, want errNotInstalled", err)
	}
}

func TestCollectCancelled(t *testing.T) {
	c := New(Config{EDR: []EDRConfig{{Name: "x", ProcessNames: []string{"x"}}}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	f, err := c.Collect(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if len(f.EDR) != 1 || f.EDR[0].Running {
		t.Errorf("EDR = %+v, want one entry not running", f.EDR)
	}
}

// TestCollectThisHost runs every real collector against the machine the
// tests run on; only facts every Linux host has are asserted.
func TestCollectThisHost(t *testing.T) {
	name := edrName(t)
	path := filepath.Join(t.TempDir(), name)
	want := copyExecutable(t, sleepBinary(t), path, nil)
	startProcess(t, path)
	srv, pool := newTLSManager(t)

	c := New(Config{EDR: []EDRConfig{{Name: "sensor", ProcessNames: []string{name}, ManagerAddr: srv.Listener.Addr().String(), ManagerRootCAs: pool}}})
	f, err := c.Collect(t.Context())
	if err != nil {
		t.Logf("partial collection on this host: %v", err)
	}
	rel, rerr := os.ReadFile("/proc/sys/kernel/osrelease")
	if rerr != nil {
		t.Fatal(rerr)
	}
	if f.OS.Kernel != strings.TrimSpace(string(rel)) || f.OS.Arch != runtimeArch() || f.OS.Name == "" {
		t.Errorf("OS = %+v", f.OS)
	}
	if len(f.EDR) != 1 || !f.EDR[0].Running || f.EDR[0].ExeSHA256 != want || f.EDR[0].ManagerLastReached.IsZero() {
		t.Errorf("EDR = %+v", f.EDR)
	}
	t.Logf("this host: os=%+v disk_encrypted=%s firewall_active=%s screen_lock=%s",
		f.OS, fmtBoolPtr(f.DiskEncrypted), fmtBoolPtr(f.FirewallActive), fmtBoolPtr(f.ScreenLock))
}
