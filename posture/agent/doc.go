// Package agent is the endpoint side of device trust: enrollment (the
// device key is generated and kept in the agent's state dir and never leaves
// the device; the edge issues a client certificate once the user approves),
// the posture collectors — the facts `ztna agent` reports about its own
// device (OS and kernel version, disk encryption, firewall, screen lock,
// EDR/AV state) — and the Runner that sends them, signed with the device
// key, on a schedule and renews the device certificate before it expires.
//
// The EDR check is built to defeat the three ways a one-time antivirus check
// is usually cheated:
//
//  1. A fake file imitating the install: the agent looks for a running
//     process, never for a file, and reports the SHA-256 of the executable
//     that process is actually running (on Linux read through /proc/PID/exe,
//     so swapping the file on disk after start changes nothing). The edge
//     compares that hash with its allow-list; a renamed dummy binary fails.
//  2. Killing the EDR after authentication: reports are collected on a
//     schedule and the edge enforces their maximum age.
//  3. Blocking the EDR's management server: the agent dials the configured
//     management host:port over TLS (certificate verified) and reports when it
//     last succeeded, so "running but unheard of" is visible to the edge.
//
// The Linux collectors are real and tested. The macOS and Windows collectors
// (collect_darwin.go, collect_windows.go) use each platform's standard
// commands, are compile-checked only and are untested here.
//
// This package only observes. It must never decide whether a device is
// trusted (that is the edge's job, with its allow-lists and profiles), never
// change the device's configuration, never run a command through /bin/sh or
// build one from anything but fixed text and integers (Windows' PowerShell
// invocations are fixed strings), never find tools through $PATH, and never
// block beyond its context and per-probe timeouts. An unknown fact is
// reported as unknown (a nil pointer), never guessed.
package agent
