//go:build linux

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// maxProcFile bounds reads of small /proc, /sys and /etc files.
const maxProcFile = 64 << 10

// maxMountinfo bounds /proc/self/mountinfo, which can be long on hosts with
// many containers.
const maxMountinfo = 4 << 20

// commLen is how much of a process name the kernel keeps (TASK_COMM_LEN-1).
const commLen = 15

// systemBinDirs are where system tools are looked up (NixOS keeps them
// under /run/current-system).
func systemBinDirs() []string {
	return []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin", "/run/current-system/sw/bin"}
}

// path joins p (an absolute path such as "/proc/self/mountinfo") under the
// configured root.
func (c *Collector) path(p string) string { return filepath.Join(c.root, p) }

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// osInfo reads NAME and VERSION_ID from os-release and the running kernel's
// release from /proc.
func (c *Collector) osInfo(context.Context) (OS, error) {
	var (
		info OS
		errs []error
	)
	data, err := readBounded(c.path("/etc/os-release"), maxProcFile)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = readBounded(c.path("/usr/lib/os-release"), maxProcFile)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("os-release: %w", err))
	} else {
		kv := parseOSRelease(data)
		info.Name = kv["NAME"]
		info.Version = kv["VERSION_ID"]
	}
	rel, err := readBounded(c.path("/proc/sys/kernel/osrelease"), maxProcFile)
	if err != nil {
		errs = append(errs, fmt.Errorf("kernel release: %w", err))
	} else {
		info.Kernel = strings.TrimSpace(string(rel))
	}
	return info, errors.Join(errs...)
}

// parseOSRelease parses the os-release(5) format: KEY=value lines whose
// values may be quoted with ' or " and use backslash escapes.
func parseOSRelease(data []byte) map[string]string {
	kv := make(map[string]string)
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || key == "" {
			continue
		}
		kv[key] = unquoteShell(val)
	}
	return kv
}

func unquoteShell(s string) string {
	if len(s) >= 2 && s[0] == '\'' && s[len(s)-1] == '\'' {
		return s[1 : len(s)-1]
	}
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountEntry is the part of a /proc/self/mountinfo line the disk check uses.
type mountEntry struct {
	MajorMinor string // "254:0"
	MountPoint string
	FSType     string
	Source     string
}

// rootMount returns the mount currently visible at "/" (the last one listed,
// since later mounts stack on earlier ones).
func rootMount(data []byte) (mountEntry, bool) {
	var (
		found mountEntry
		ok    bool
	)
	for line := range strings.Lines(string(data)) {
		m, valid := parseMountinfoLine(strings.TrimSpace(line))
		if valid && m.MountPoint == "/" {
			found, ok = m, true
		}
	}
	return found, ok
}

// parseMountinfoLine parses "id parent maj:min root mountpoint opts
// [optional...] - fstype source superopts" (proc(5)).
func parseMountinfoLine(line string) (mountEntry, bool) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 6 || sep < 0 || sep+2 >= len(fields) {
		return mountEntry{}, false
	}
	return mountEntry{
		MajorMinor: fields[2],
		MountPoint: unescapeMountinfo(fields[4]),
		FSType:     fields[sep+1],
		Source:     unescapeMountinfo(fields[sep+2]),
	}, true
}

// unescapeMountinfo undoes the kernel's octal escaping (\040 for space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// diskEncrypted reports whether the root filesystem sits on dm-crypt: its
// block device, or every device beneath it (LVM, RAID), is a CRYPT- device
// mapper target. Root filesystems that are not on a local block device
// (overlay, tmpfs, network, ZFS) are unknown.
func (c *Collector) diskEncrypted(context.Context) (*bool, error) {
	data, err := readBounded(c.path("/proc/self/mountinfo"), maxMountinfo)
	if err != nil {
		return nil, err
	}
	m, ok := rootMount(data)
	if !ok {
		return nil, errors.New("no root mount in mountinfo")
	}
	dir := c.blockDeviceDir(m)
	if dir == "" {
		c.unknownf("disk_encrypted", "root filesystem is not on a block device",
			"fstype", m.FSType, "source", m.Source, "dev", m.MajorMinor)
		return nil, nil
	}
	enc, err := cryptBacked(dir, 0)
	if err != nil {
		return nil, err
	}
	return boolPtr(enc), nil
}

// blockDeviceDir finds the sysfs directory of the mount's block device, by
// device number or, for filesystems with anonymous device numbers (btrfs),
// by the /dev source path. "" means none.
func (c *Collector) blockDeviceDir(m mountEntry) string {
	if major, _, ok := strings.Cut(m.MajorMinor, ":"); ok && major != "0" {
		dir := c.path("/sys/dev/block/" + m.MajorMinor)
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
	}
	if !strings.HasPrefix(m.Source, "/dev/") {
		return ""
	}
	resolved, err := filepath.EvalSymlinks(c.path(m.Source))
	if err != nil {
		return ""
	}
	dir := c.path("/sys/class/block/" + filepath.Base(resolved))
	if _, err := os.Stat(dir); err != nil {
		return ""
	}
	return dir
}

// maxStackDepth bounds the walk down device-mapper slaves.
const maxStackDepth = 16

// cryptBacked reports whether the block device at sysfs dir is a dm-crypt
// target, or is built only from devices that are.
func cryptBacked(dir string, depth int) (bool, error) {
	if depth > maxStackDepth {
		return false, fmt.Errorf("%s: block device stack deeper than %d", dir, maxStackDepth)
	}
	uuid, err := readBounded(filepath.Join(dir, "dm", "uuid"), maxProcFile)
	if err == nil && bytes.HasPrefix(bytes.TrimSpace(uuid), []byte("CRYPT-")) {
		return true, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	slaves, err := os.ReadDir(filepath.Join(dir, "slaves"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if len(slaves) == 0 {
		return false, nil
	}
	for _, s := range slaves {
		ok, err := cryptBacked(filepath.Join(dir, "slaves", s.Name()), depth+1)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// firewallActive reports whether packets arriving for this host are
// filtered: an nftables base chain on the input hook with rules or a drop
// policy, or iptables INPUT rules or a DROP/REJECT policy. It is false only
// when every installed tool answered; unknown when none is installed.
func (c *Collector) firewallActive(ctx context.Context) (*bool, error) {
	var (
		errs     []error
		answered bool
	)
	for _, check := range []func(context.Context) (bool, error){c.nftInputFiltered, c.iptablesInputFiltered} {
		active, err := check(ctx)
		switch {
		case errors.Is(err, errNotInstalled):
			continue
		case err != nil:
			errs = append(errs, err)
		case active:
			return boolPtr(true), nil
		default:
			answered = true
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !answered {
		c.unknownf("firewall_active", "neither nft nor iptables is installed")
		return nil, nil
	}
	return boolPtr(false), nil
}

func (c *Collector) nftInputFiltered(ctx context.Context) (bool, error) {
	out, err := c.run(ctx, "nft", "-j", "list", "ruleset")
	if err != nil {
		return false, err
	}
	return nftInputFiltered(out)
}

// nftInputFiltered inspects `nft -j list ruleset` output.
func nftInputFiltered(out []byte) (bool, error) {
	if len(bytes.TrimSpace(out)) == 0 {
		return false, nil // empty ruleset prints nothing
	}
	var doc struct {
		Nftables []struct {
			Chain *struct {
				Family string `json:"family"`
				Table  string `json:"table"`
				Name   string `json:"name"`
				Hook   string `json:"hook"`
				Policy string `json:"policy"`
			} `json:"chain"`
			Rule *struct {
				Family string `json:"family"`
				Table  string `json:"table"`
				Chain  string `json:"chain"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return false, fmt.Errorf("nft: parse ruleset: %w", err)
	}
	inputChains := make(map[[3]string]bool)
	for _, o := range doc.Nftables {
		if ch := o.Chain; ch != nil && ch.Hook == "input" {
			if ch.Policy == "drop" {
				return true, nil
			}
			inputChains[[3]string{ch.Family, ch.Table, ch.Name}] = true
		}
	}
	for _, o := range doc.Nftables {
		if r := o.Rule; r != nil && inputChains[[3]string{r.Family, r.Table, r.Chain}] {
			return true, nil
		}
	}
	return false, nil
}

func (c *Collector) iptablesInputFiltered(ctx context.Context) (bool, error) {
	out, err := c.run(ctx, "iptables", "-S", "INPUT")
	if err != nil {
		return false, err
	}
	return iptablesInputFiltered(out), nil
}

// iptablesInputFiltered inspects `iptables -S INPUT` output.
func iptablesInputFiltered(out []byte) bool {
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "-P" && f[1] == "INPUT" && f[2] != "ACCEPT":
			return true
		case len(f) >= 2 && f[0] == "-A" && f[1] == "INPUT":
			return true
		}
	}
	return false
}

// screenLock asks GNOME's settings when the agent runs inside a desktop
// session (a session bus is set). As a system service it sees no user's
// settings, so the fact stays unknown rather than reading root's defaults.
func (c *Collector) screenLock(ctx context.Context) (*bool, error) {
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") == "" {
		c.unknownf("screen_lock", "no desktop session bus")
		return nil, nil
	}
	out, err := c.run(ctx, "gsettings", "get", "org.gnome.desktop.screensaver", "lock-enabled")
	if errors.Is(err, errNotInstalled) || (err != nil && strings.Contains(err.Error(), "No such schema")) {
		c.unknownf("screen_lock", "no GNOME screensaver settings")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	switch strings.TrimSpace(string(out)) {
	case "false":
		return boolPtr(false), nil
	case "true":
	default:
		return nil, fmt.Errorf("gsettings lock-enabled: unexpected %q", firstLine(string(out)))
	}
	// Locking is enabled, but it only happens if the session ever goes idle.
	out, err = c.run(ctx, "gsettings", "get", "org.gnome.desktop.session", "idle-delay")
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(out)) // "uint32 300"
	if len(f) == 0 {
		return nil, errors.New("gsettings idle-delay: empty output")
	}
	delay, err := strconv.ParseUint(f[len(f)-1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gsettings idle-delay: %w", err)
	}
	return boolPtr(delay > 0), nil
}

// procStat is what the EDR scan needs from /proc/PID/stat.
type procStat struct {
	Comm  string
	State byte
	Start uint64
}

func (c *Collector) readProcStat(pid int) (procStat, error) {
	data, err := readBounded(c.path("/proc/"+strconv.Itoa(pid)+"/stat"), maxProcFile)
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(data)
}

// parseProcStat parses "pid (comm) state ppid ... starttime ..." where comm
// may itself contain spaces and parentheses (proc(5)).
func parseProcStat(data []byte) (procStat, error) {
	s := string(data)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return procStat{}, errors.New("malformed stat")
	}
	rest := strings.Fields(s[closing+1:])
	// rest[0] is field 3 (state); starttime is field 22.
	if len(rest) < 20 || len(rest[0]) != 1 {
		return procStat{}, errors.New("malformed stat")
	}
	start, err := strconv.ParseUint(rest[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed stat start time: %w", err)
	}
	return procStat{Comm: s[open+1 : closing], State: rest[0][0], Start: start}, nil
}

// listProcesses scans /proc. Zombies and stopped or traced processes are
// left out: a killed or frozen EDR is not running.
func (c *Collector) listProcesses(context.Context) ([]process, error) {
	entries, err := os.ReadDir(c.path("/proc"))
	if err != nil {
		return nil, err
	}
	procs := make([]process, 0, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		st, err := c.readProcStat(pid)
		if err != nil {
			continue // exited while we looked
		}
		switch st.State {
		case 'Z', 'X', 'x', 'T', 't':
			continue
		}
		exe, _ := os.Readlink(c.path("/proc/" + e.Name() + "/exe")) // "" for kernel threads or without permission
		procs = append(procs, process{PID: pid, Name: st.Comm, Exe: exe, start: st.Start})
	}
	return procs, nil
}

// matchProcess matches the kernel's (possibly truncated) command name or the
// base name of the executable.
func matchProcess(p process, name string) bool {
	if p.Name == name || (len(name) > commLen && p.Name == name[:commLen]) {
		return true
	}
	return p.Exe != "" && filepath.Base(strings.TrimSuffix(p.Exe, " (deleted)")) == name
}

// exeHash hashes the executable the process is running, opened through
// /proc/PID/exe: that is the mapped file itself, even if the path on disk
// now holds something else or nothing.
func (c *Collector) exeHash(ctx context.Context, p process) (string, string, error) {
	exe := c.path("/proc/" + strconv.Itoa(p.PID) + "/exe")
	f, err := os.Open(exe)
	if err != nil {
		return p.Exe, "", err
	}
	defer f.Close()
	path, err := os.Readlink(exe)
	if err != nil {
		path = p.Exe
	}
	// The open file pins whatever process held the PID at open time; make
	// sure that was still the process we matched, not a successor.
	st, err := c.readProcStat(p.PID)
	if err != nil || st.Start != p.start {
		return p.Exe, "", errors.New("process exited during collection")
	}
	sum, err := hashExecutable(ctx, f)
	if err != nil {
		return path, "", err
	}
	return path, sum, nil
}
