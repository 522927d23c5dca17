package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Options are the edge's collaborators, supplied by the caller.
type Options struct {
	// Handler is the edge pipeline, served on HTTPS (h1, h2) and HTTP/3.
	// Required.
	Handler http.Handler
	// TLSConfig supplies certificates (Certificates, GetCertificate or
	// GetConfigForClient). Required. It is cloned; the HTTPS clone gets
	// MinVersion TLS 1.2 and NextProtos h2, http/1.1 (followed by any other
	// protocols it already listed); HTTP/3 uses TLS 1.3 and h3.
	TLSConfig *tls.Config
	// Metrics is served at the admin /metrics. nil → prometheus.DefaultGatherer.
	Metrics prometheus.Gatherer
	// Registerer receives this package's metrics. nil → not registered.
	Registerer prometheus.Registerer
	// Logger; nil → discard.
	Logger *slog.Logger
	// Ready is an extra readiness condition for /readyz. nil → always true.
	Ready func() bool
	// Tunnel serves client tunnel connections (ALPN TunnelALPN) on the
	// HTTPS port over UDP, the socket HTTP/3 uses; the edge dispatches QUIC
	// connections by ALPN. nil → the tunnel ALPN is not offered. With
	// listen.http3 off, UDP is still bound for the tunnel alone (and no
	// Alt-Svc is advertised).
	Tunnel TunnelHandler
}

// forceCloseWait bounds how long Shutdown waits for handlers and serve loops
// to return after their connections were force-closed at the end of the
// grace period. A handler still running after that ignores both its context
// and its closed connection; Shutdown reports it rather than hang.
const forceCloseWait = 2 * time.Second

// adminShutdownWait bounds the admin listener's own graceful shutdown.
const adminShutdownWait = time.Second

// Server runs the edge listeners. Create it with New, then Start (or Run),
// then Shutdown.
type Server struct {
	cfg     Config // defaults applied
	opts    Options
	log     *slog.Logger
	metrics *metrics
	conns   *connTracker
	inbound *inboundPolicy // nil when listen.proxy_protocol is off

	inflight inflightCounter
	serving  atomic.Bool
	draining atomic.Bool

	baseCtx    context.Context // request contexts derive from it; cancelled when grace expires
	baseCancel context.CancelFunc

	// janitorEvery overrides the janitor interval (tests); negative disables.
	janitorEvery time.Duration
	// tunnelGoAwayGrace is how long a tunnel handler has after
	// max_connection_duration cancelled its context (tests shorten it).
	tunnelGoAwayGrace time.Duration
	tunnels           *tunnelTracker // nil without Options.Tunnel

	// altSvc is written in Start before any serving goroutine starts.
	altSvc string

	mu         sync.Mutex
	started    bool
	stopping   bool
	tcpLn      net.Listener
	udpConn    *net.UDPConn
	redirectLn net.Listener
	adminLn    net.Listener
	https      *http.Server
	h3         *http3.Server
	redirect   *http.Server
	admin      *http.Server
	// With Options.Tunnel the edge runs the QUIC listener itself and hands
	// HTTP/3 connections to h3 through h3Queue; otherwise h3 listens.
	quicLn   *quic.Listener
	quicTLS  *tls.Config
	quicConf *quic.Config
	h3Queue  *quicConnQueue

	serveWG     sync.WaitGroup // serve loops and the janitor
	janitorStop chan struct{}

	errMu      sync.Mutex
	serveErr   error
	serveErrCh chan struct{} // closed at the first serve error

	shutdownDone chan struct{}
	shutdownErr  error // written before shutdownDone is closed
}

// New checks the configuration and options; it binds nothing.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Handler == nil {
		return nil, errors.New("edge: Options.Handler is required")
	}
	if opts.TLSConfig == nil {
		return nil, errors.New("edge: Options.TLSConfig is required")
	}
	if len(opts.TLSConfig.Certificates) == 0 && opts.TLSConfig.GetCertificate == nil && opts.TLSConfig.GetConfigForClient == nil {
		return nil, errors.New("edge: Options.TLSConfig has no certificate source (Certificates, GetCertificate or GetConfigForClient)")
	}
	if opts.Metrics == nil {
		opts.Metrics = prometheus.DefaultGatherer
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:          cfg,
		opts:         opts,
		log:          loggerOrDiscard(opts.Logger),
		metrics:      m,
		conns:        newConnTracker(m, cfg.MaxConnectionDuration),
		serveErrCh:   make(chan struct{}),
		shutdownDone: make(chan struct{}),
		janitorStop:  make(chan struct{}),

		tunnelGoAwayGrace: defaultTunnelGoAwayGrace,
	}
	if opts.Tunnel != nil {
		s.tunnels = newTunnelTracker(m, defaultTunnelLimit)
	}
	if s.inbound, err = newInboundPolicy(s.cfg.ProxyProtocol, m, s.log); err != nil {
		return nil, fmt.Errorf("edge: listen.proxy_protocol: %w", err)
	}
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	return s, nil
}

func loggerOrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// BaseContext is the context every request context derives from (h1, h2 and
// h3). It is cancelled when the grace period of Shutdown expires, so
// long-lived handlers — WebSocket relays, streams — stop; hijacked
// connections are also closed at that moment.
func (s *Server) BaseContext() context.Context { return s.baseCtx }

// Start binds every listener, then starts serving. If any bind fails, the
// ones already bound are closed and the error names the failing listener.
// Addresses with port 0 get a free port; HTTP/3 binds UDP on the port the
// HTTPS TCP listener actually got.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("edge: Start called twice")
	}
	if s.stopping {
		return http.ErrServerClosed
	}
	if err := s.bind(); err != nil {
		s.closeListeners()
		return err
	}
	s.build()
	if s.udpConn != nil {
		// Before quic-go touches the socket, so its own warning is silenced.
		checkUDPBuffers(s.udpConn, quicBufferSize, &udpBufferWarnOnce, s.log)
	}
	if s.tunnels != nil {
		ln, err := quic.Listen(s.udpConn, s.quicTLS, s.quicConf)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("edge: listen.address %s (udp, QUIC): %w", s.udpConn.LocalAddr(), err)
		}
		s.quicLn = ln
	}

	httpsLn, redirectLn := s.tcpLn, s.redirectLn
	if s.inbound != nil {
		httpsLn = s.inbound.listener(httpsLn, "https")
		if redirectLn != nil {
			redirectLn = s.inbound.listener(redirectLn, "http-redirect")
		}
		s.warnInbound()
	}
	s.goServe("https", func() error {
		return s.https.ServeTLS(&trackedListener{Listener: httpsLn, t: s.conns}, "", "")
	})
	switch {
	case s.quicLn != nil:
		if s.h3 != nil {
			s.goServe("http3", func() error { return s.h3.ServeListener(s.h3Queue) })
		}
		s.goServe("quic", s.acceptQUIC)
	case s.h3 != nil:
		s.goServe("http3", func() error { return s.h3.Serve(s.udpConn) })
	}
	if s.redirect != nil {
		s.goServe("http-redirect", func() error { return s.redirect.Serve(redirectLn) })
	}
	if s.admin != nil {
		s.goServe("admin", func() error { return s.admin.Serve(s.adminLn) })
	}
	if every := s.janitorInterval(); every > 0 {
		s.serveWG.Go(func() { s.janitor(every) })
	}
	s.started = true
	s.serving.Store(true)
	s.log.Info("edge: listening", "https", addrString(s.tcpLn), "http3", s.h3 != nil, "tunnel", s.tunnels != nil,
		"http_redirect", addrString(s.redirectLn), "admin", addrString(s.adminLn),
		"proxy_protocol", s.inbound != nil)
	return nil
}

// warnInbound logs what PROXY protocol cannot do in this configuration.
func (s *Server) warnInbound() {
	if s.h3 != nil {
		s.log.Warn("edge: listen.proxy_protocol covers TCP only: HTTP/3 (UDP) clients appear with the load balancer's address unless it forwards UDP transparently; set listen.http3: false otherwise",
			"trusted_cidrs", s.cfg.ProxyProtocol.TrustedCIDRs)
	}
	if s.tunnels != nil {
		s.log.Warn("edge: listen.proxy_protocol covers TCP only: tunnel (QUIC over UDP) clients appear with the load balancer's address unless it forwards UDP transparently",
			"trusted_cidrs", s.cfg.ProxyProtocol.TrustedCIDRs)
	}
	for _, pfx := range s.inbound.trusted {
		if pfx.Bits() == 0 {
			s.log.Warn("edge: listen.proxy_protocol trusts every address: any client can claim any source address",
				"trusted_cidr", pfx.String())
		}
	}
}

func (s *Server) bind() error {
	var err error
	s.tcpLn, s.udpConn, err = listenTCPUDP(s.cfg.Address, *s.cfg.HTTP3 || s.opts.Tunnel != nil)
	if err != nil {
		return err
	}
	if s.cfg.HTTPRedirectAddress != "" {
		if s.redirectLn, err = net.Listen("tcp", s.cfg.HTTPRedirectAddress); err != nil {
			return fmt.Errorf("edge: listen.http_redirect_address %s: %w", s.cfg.HTTPRedirectAddress, err)
		}
	}
	if s.cfg.AdminAddress != AdminOff {
		if s.adminLn, err = net.Listen("tcp", s.cfg.AdminAddress); err != nil {
			return fmt.Errorf("edge: listen.admin_address %s: %w", s.cfg.AdminAddress, err)
		}
	}
	return nil
}

// listenTCPUDP binds TCP on addr and, if withUDP, UDP on the same IP and the
// TCP port actually bound. With port 0 the UDP port may be taken by someone
// else; then it tries a few fresh TCP ports.
func listenTCPUDP(addr string, withUDP bool) (net.Listener, *net.UDPConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("edge: listen.address %s: %w", addr, err)
	}
	attempts := 1
	if port == "0" && withUDP {
		attempts = 5
	}
	for i := 1; ; i++ {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("edge: listen.address %s (tcp): %w", addr, err)
		}
		if !withUDP {
			return ln, nil, nil
		}
		tcpAddr := ln.Addr().(*net.TCPAddr)
		udpAddr := &net.UDPAddr{Port: tcpAddr.Port}
		if host != "" {
			udpAddr.IP, udpAddr.Zone = tcpAddr.IP, tcpAddr.Zone
		}
		uc, err := net.ListenUDP("udp", udpAddr)
		if err == nil {
			return ln, uc, nil
		}
		_ = ln.Close()
		if i >= attempts {
			return nil, nil, fmt.Errorf("edge: listen.address %s (udp for HTTP/3, port %d): %w", addr, tcpAddr.Port, err)
		}
	}
}

// build creates the servers once the listeners (and so the ports) exist.
func (s *Server) build() {
	cfg := s.cfg
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug) // TLS handshake EOFs from scanners are normal
	base := func(net.Listener) context.Context { return s.baseCtx }

	tlsConf := s.opts.TLSConfig.Clone()
	if tlsConf.MinVersion < tls.VersionTLS12 {
		tlsConf.MinVersion = tls.VersionTLS12
	}
	// h2 and http/1.1 first, in that order; other protocols the caller
	// configured (e.g. "acme-tls/1" for ACME TLS-ALPN-01) are kept after them.
	protos := []string{"h2", "http/1.1"}
	for _, p := range tlsConf.NextProtos {
		if !slices.Contains(protos, p) && p != http3.NextProtoH3 {
			protos = append(protos, p)
		}
	}
	tlsConf.NextProtos = protos

	if s.udpConn != nil && *cfg.HTTP3 {
		s.altSvc = fmt.Sprintf(`h3=":%d"; ma=86400`, s.udpConn.LocalAddr().(*net.UDPAddr).Port)
		h3TLS := s.opts.TLSConfig.Clone()
		h3TLS.MinVersion = tls.VersionTLS13
		s.h3 = &http3.Server{
			Handler:   s.wrapH3(s.opts.Handler),
			TLSConfig: h3TLS, // http3 adds the "h3" ALPN itself
			QUICConfig: &quic.Config{
				// 0-RTT data can be replayed by an attacker; requests carry
				// session cookies, so the edge never accepts it.
				Allow0RTT: false,
			},
			MaxHeaderBytes: cfg.MaxHeaderBytes,
			IdleTimeout:    cfg.IdleTimeout,
			// Also applied to connections handed over by the edge's own
			// QUIC listener (ServeListener → the same connection setup).
			ConnContext: s.conns.quicConnContext(s.baseCtx),
			// http3 logs each request URI at debug level; URIs can carry
			// codes and tokens, so only info and above reach our logger.
			Logger: slog.New(minLevelHandler{Handler: s.log.Handler(), min: slog.LevelInfo}),
		}
	}

	if s.tunnels != nil {
		protos := []string{TunnelALPN}
		if s.h3 != nil {
			protos = []string{http3.NextProtoH3, TunnelALPN}
			s.h3Queue = newQUICConnQueue(s.udpConn.LocalAddr())
		}
		s.quicTLS = quicTLSConfig(s.opts.TLSConfig, protos)
		s.quicConf = &quic.Config{
			Allow0RTT:          false, // see the HTTP/3 config; the tunnel protocol forbids it too
			MaxIncomingStreams: tunnelMaxStreams,
		}
	}

	s.https = &http.Server{
		Handler:           s.wrapHTTPS(s.opts.Handler),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          errLog,
		BaseContext:       base,
		ConnContext:       s.conns.connContext,
		ConnState:         s.conns.connState,
	}
	if s.redirectLn != nil {
		s.redirect = &http.Server{
			Handler:           redirectHandler(s.tcpLn.Addr().(*net.TCPAddr).Port),
			ReadHeaderTimeout: cfg.ReadHeaderTimeout,
			ReadTimeout:       cfg.ReadHeaderTimeout, // bodies are never read here
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       cfg.IdleTimeout,
			MaxHeaderBytes:    cfg.MaxHeaderBytes,
			ErrorLog:          errLog,
			BaseContext:       base,
		}
	}
	if s.adminLn != nil {
		s.admin = &http.Server{
			Handler:           adminHandler(s.ready, s.opts.Metrics, s.log),
			ReadHeaderTimeout: cfg.ReadHeaderTimeout,
			ReadTimeout:       cfg.ReadHeaderTimeout,
			WriteTimeout:      30 * time.Second, // gathering metrics is bounded by this
			IdleTimeout:       cfg.IdleTimeout,
			MaxHeaderBytes:    cfg.MaxHeaderBytes,
			ErrorLog:          errLog,
		}
	}
}

// goServe runs one serve loop; an unexpected end is recorded as the first
// serve error (which makes Run shut everything down).
func (s *Server) goServe(name string, serve func() error) {
	s.serveWG.Go(func() {
		err := serve()
		if err == nil || errors.Is(err, http.ErrServerClosed) || s.draining.Load() {
			return
		}
		s.log.Error("edge: listener stopped", "listener", name, "err", err)
		s.errMu.Lock()
		defer s.errMu.Unlock()
		if s.serveErr == nil {
			s.serveErr = fmt.Errorf("edge: serve %s: %w", name, err)
			close(s.serveErrCh)
		}
	})
}

func (s *Server) firstServeErr() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.serveErr
}

// ready is the /readyz condition.
func (s *Server) ready() bool {
	return s.serving.Load() && !s.draining.Load() && (s.opts.Ready == nil || s.opts.Ready())
}

// janitorInterval is how often idle connections are checked: at most 1s,
// half of max_connection_duration for short durations, never below 50ms.
// Without max_connection_duration it still runs when HTTP/3 is on, to close
// idle QUIC connections while draining.
func (s *Server) janitorInterval() time.Duration {
	if s.janitorEvery != 0 {
		return max(s.janitorEvery, 0)
	}
	maxAge := s.cfg.MaxConnectionDuration
	if maxAge <= 0 && s.h3 == nil {
		return 0
	}
	every := time.Second
	if maxAge > 0 {
		every = min(every, max(maxAge/2, 50*time.Millisecond))
	}
	return every
}

func (s *Server) janitor(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.janitorStop:
			return
		case now := <-t.C:
			s.conns.closeExpired(now, s.cfg.MaxConnectionDuration, every, s.draining.Load())
		}
	}
}

// Addr is the bound HTTPS TCP address (nil before Start).
func (s *Server) Addr() net.Addr { return s.addrOf(func() net.Addr { return lnAddr(s.tcpLn) }) }

// UDPAddr is the bound UDP address of HTTP/3 and the tunnel (nil if both
// are off).
func (s *Server) UDPAddr() net.Addr {
	return s.addrOf(func() net.Addr {
		if s.udpConn == nil {
			return nil
		}
		return s.udpConn.LocalAddr()
	})
}

// RedirectAddr is the bound plain-HTTP redirect address (nil if off).
func (s *Server) RedirectAddr() net.Addr {
	return s.addrOf(func() net.Addr { return lnAddr(s.redirectLn) })
}

// AdminAddr is the bound admin address (nil if off).
func (s *Server) AdminAddr() net.Addr { return s.addrOf(func() net.Addr { return lnAddr(s.adminLn) }) }

func (s *Server) addrOf(f func() net.Addr) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return f()
}

func lnAddr(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

func addrString(ln net.Listener) string {
	if ln == nil {
		return "off"
	}
	return ln.Addr().String()
}

// Run starts the server, waits for ctx to end (or a listener to fail), then
// shuts down with a fresh context (the drain has its own bounds). It returns
// the first serve error, else the shutdown error.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.serveErrCh:
	}
	shutdownErr := s.Shutdown(context.Background())
	if err := s.firstServeErr(); err != nil {
		return err
	}
	return shutdownErr
}

// Shutdown drains and stops everything:
//
//  1. /readyz turns 503 and HTTPS responses carry Connection: close (h1
//     closes, h2 GOAWAY); idle HTTP/3 connections are closed.
//  2. Wait DrainDelay (or until ctx ends) so load balancers notice.
//  3. Close the HTTPS, HTTP/3 and redirect listeners and cancel every tunnel
//     handler's context (cause ErrDraining); in-flight requests, including
//     hijacked WebSockets, and tunnel handlers get GraceTimeout (bounded by
//     ctx).
//  4. If they are not done by then, BaseContext is cancelled and every
//     remaining connection is closed, hijacked ones included, tunnel
//     connections with application error 0x103 (going away); handlers get
//     a short bounded time to return.
//  5. Close the admin listener and return.
//
// It returns nil after a complete stop (also when the grace period had to
// cut connections), ctx's error if ctx ended first, and an error naming what
// did not stop. Calling it again waits for the first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		select {
		case <-s.shutdownDone:
			return s.shutdownErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.stopping = true
	started := s.started
	s.mu.Unlock()

	if started {
		s.shutdownErr = s.shutdown(ctx)
	}
	s.baseCancel()
	close(s.shutdownDone)
	return s.shutdownErr
}

func (s *Server) shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.log.Info("edge: draining", "drain_delay", s.cfg.DrainDelay, "grace_timeout", s.cfg.GraceTimeout)
	delay := time.NewTimer(s.cfg.DrainDelay)
	select {
	case <-delay.C:
	case <-ctx.Done():
	}
	delay.Stop()

	graceCtx, cancelGrace := context.WithTimeout(ctx, s.cfg.GraceTimeout)
	defer cancelGrace()

	// Each server's Shutdown closes its listener first, then waits for its
	// requests; http3's also sends GOAWAY and, when its context ends, closes
	// its connections and waits for its handlers. That context ends only
	// after BaseContext is cancelled below, so an HTTP/3 handler cut off at
	// the end of the grace period sees why, like the h1/h2 ones do (with
	// graceCtx, http3 raced the cancellation).
	h3Ctx, cutH3 := context.WithCancel(context.Background())
	defer cutH3()
	tunnelsCancelled := 0
	// Long-lived exchanges on the HTTPS listener (the tunnel's HTTP/2
	// fallback) are told to go away at the same moment as QUIC tunnels.
	s.conns.cancelLongLived(ErrDraining)
	if s.quicLn != nil {
		// The edge's own QUIC listener: new connections are refused,
		// established ones (HTTP/3 and tunnel) carry on. Tunnel handlers
		// are told to go away now; they have the grace period to finish.
		_ = s.quicLn.Close()
		if s.h3Queue != nil {
			_ = s.h3Queue.Close()
		}
		tunnelsCancelled = s.tunnels.goAwayAll()
	}
	var servers sync.WaitGroup
	servers.Go(func() { _ = s.https.Shutdown(graceCtx) })
	if s.h3 != nil {
		servers.Go(func() { _ = s.h3.Shutdown(h3Ctx) })
	}
	if s.redirect != nil {
		servers.Go(func() { _ = s.redirect.Shutdown(graceCtx) })
	}
	serversDone := make(chan struct{})
	go func() { servers.Wait(); close(serversDone) }()

	graceful := true
	select {
	case <-serversDone:
		// net/http does not wait for hijacked connections; their handlers
		// are still counted in flight.
		select {
		case <-s.inflight.idle():
		case <-graceCtx.Done():
			graceful = false
		}
	case <-graceCtx.Done():
		graceful = false
	}
	if graceful && s.tunnels != nil {
		select {
		case <-s.tunnels.running.idle():
		case <-graceCtx.Done():
			graceful = false
		}
	}

	var errs []error
	if !graceful {
		s.baseCancel()
		cutH3()
		running := s.inflight.count()
		_ = s.https.Close()
		if s.redirect != nil {
			_ = s.redirect.Close()
		}
		closed := s.conns.closeAllTCP()
		tunnelsClosed := 0
		if s.tunnels != nil {
			tunnelsClosed = s.tunnels.closeAll()
		}
		s.log.Warn("edge: grace period over, closing remaining connections",
			"handlers_running", running, "tcp_connections_closed", closed,
			"tunnels_told_to_go_away", tunnelsCancelled, "tunnel_connections_closed", tunnelsClosed)
	}
	// One deadline for everything that must stop now; a context, unlike a
	// timer channel, can be waited on more than once.
	stopCtx, cancelStop := context.WithTimeout(context.Background(), forceCloseWait)
	defer cancelStop()
	select {
	case <-serversDone:
	case <-stopCtx.Done():
		errs = append(errs, errors.New("edge: HTTP/3 connections did not stop after being closed"))
	}
	select {
	case <-s.inflight.idle():
	case <-stopCtx.Done():
		errs = append(errs, fmt.Errorf("edge: %d handlers still running after their connections were closed", s.inflight.count()))
	}
	if s.tunnels != nil {
		select {
		case <-s.tunnels.running.idle():
		case <-stopCtx.Done():
			errs = append(errs, fmt.Errorf("edge: %d tunnel handlers still running after their connections were closed", s.tunnels.running.count()))
		}
	}

	close(s.janitorStop)
	if s.udpConn != nil {
		// Neither http3.Server.Serve nor quic-go's listener closes the
		// socket it was given.
		_ = s.udpConn.Close()
	}
	if s.admin != nil {
		actx, cancel := context.WithTimeout(context.Background(), adminShutdownWait)
		if err := s.admin.Shutdown(actx); err != nil {
			_ = s.admin.Close()
		}
		cancel()
	}
	s.baseCancel()

	loopsDone := make(chan struct{})
	go func() { s.serveWG.Wait(); close(loopsDone) }()
	select {
	case <-loopsDone:
	case <-stopCtx.Done():
		errs = append(errs, errors.New("edge: serve loops did not stop"))
	}
	s.closeListeners()
	s.serving.Store(false)

	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.log.Info("edge: stopped", "graceful", graceful)
	return nil
}

// closeListeners closes whatever is bound; closing twice is harmless.
func (s *Server) closeListeners() {
	for _, ln := range []net.Listener{s.tcpLn, s.redirectLn, s.adminLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	if s.quicLn != nil {
		_ = s.quicLn.Close()
	}
	if s.udpConn != nil {
		_ = s.udpConn.Close()
	}
}

// minLevelHandler drops records below min.
type minLevelHandler struct {
	slog.Handler
	min slog.Level
}

func (h minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevelHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevelHandler{Handler: h.Handler.WithAttrs(a), min: h.min}
}

func (h minLevelHandler) WithGroup(name string) slog.Handler {
	return minLevelHandler{Handler: h.Handler.WithGroup(name), min: h.min}
}
