// Package integration holds the end-to-end tests of ztna: the whole dev
// system (dev IdP, edge, whoami upstream, bbolt store) started in-process on
// 127.0.0.1:0 through internal/devenv, driven by real clients — Go HTTP/1.1,
// HTTP/2 and HTTP/3 clients doing the browser flow by hand, WebSockets, and
// (browser_test.go) headless Chromium.
//
// It never reaches into the edge's internals to make a test pass: what it
// checks is what a user, an attacker or an app behind the edge would see.
// It must never depend on the network beyond loopback.
package integration
