package edge

import (
	"context"
	"net/http"
	"time"
)

// LongLived returns the context of a long-lived exchange served on r's
// connection by a handler on the HTTPS listener — the client tunnel's
// HTTP/2 fallback, whose control stream lasts as long as the tunnel. Like
// the context of a QUIC tunnel connection (TunnelHandler), it ends with
// cause ErrDraining when the edge starts draining (after the drain delay)
// and ErrMaxConnectionDuration when r's connection reaches
// max_connection_duration, so the handler can say goodbye before the edge
// closes the connection; it also ends with r's context. The handler must
// call cancel when it is done. Outside the edge (no connection info in r's
// context) it is r's context with a cancel.
func LongLived(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(r.Context())
	ci := connInfoFrom(r.Context())
	if ci == nil || ci.t == nil {
		return ctx, func() { cancel(nil) }
	}
	t := ci.t
	stopDrain := context.AfterFunc(t.longLived, func() { cancel(context.Cause(t.longLived)) })
	stopAge := func() bool { return false }
	if t.maxAge > 0 {
		timer := time.AfterFunc(t.maxAge-time.Since(ci.start), func() {
			if ci.expired.CompareAndSwap(false, true) {
				t.m.maxClosed.WithLabelValues(protoOf(r)).Inc()
			}
			cancel(ErrMaxConnectionDuration)
		})
		stopAge = timer.Stop
	}
	return ctx, func() {
		stopDrain()
		stopAge()
		cancel(nil)
	}
}

// ConnOf returns a key naming the client connection r arrived on — equal
// for every request on one TCP (or QUIC) connection while it is open,
// different for any other — or nil outside the edge. The tunnel's HTTP/2
// fallback uses it to tie data streams to the control stream that
// authenticated their connection.
func ConnOf(r *http.Request) any {
	if ci := connInfoFrom(r.Context()); ci != nil {
		return ci
	}
	return nil
}
