//go:build !linux

package redistest

import "syscall"

// sysProcAttr: only Linux can tie the child's life to the parent's; on
// other systems a test binary that dies without running t.Cleanup leaves
// its redis-server running.
func sysProcAttr() *syscall.SysProcAttr { return nil }
