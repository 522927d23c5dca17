package redistest

import "syscall"

// sysProcAttr makes the kernel SIGKILL redis-server when the test binary's
// thread that started it dies, so a test binary killed by its timeout (or
// anything else that skips t.Cleanup) leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
