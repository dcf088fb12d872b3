package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
)

// startFlags configure `lmx start`.
type startFlags struct {
	listen          listFlag
	token           string
	tlsCert         string
	tlsKey          string
	tlsClientCA     string
	metrics         string
	logFormat       string
	logLevel        string
	shutdownTimeout time.Duration
	heartbeat       time.Duration
	sessionTimeout  time.Duration
	lockDelay       time.Duration
	maxSessions     int
	maxWaiters      int
	maxKeyLen       int
	maxFrame        int
	socketMode      string
}

func addStartFlags(f *cmdFlags) *startFlags {
	sf := new(startFlags)
	f.envPrefix = "LMX_BROKER_" // never a client's variable: LMX_TLS_CERT is a client certificate
	f.Var(&sf.listen, "listen", "serve on `URL` (livemutex+tcp:// or livemutex+unix:// for live-mutex clients), repeatable (default: the default socket and "+defaultTCP+")")
	f.StringVar(&sf.token, "token", "", "refuse clients that do not present this auth token")
	f.StringVar(&sf.tlsCert, "tls-cert", "", "serve TCP with TLS: the broker's certificate, a PEM `FILE`")
	f.StringVar(&sf.tlsKey, "tls-key", "", "the certificate's key, a PEM `FILE`")
	f.StringVar(&sf.tlsClientCA, "tls-client-ca", "", "mutual TLS: require client certificates signed by the CAs in this PEM `FILE`")
	f.StringVar(&sf.metrics, "metrics", "", "serve Prometheus metrics at /metrics and a health check at /healthz over HTTP on `HOST:PORT`")
	f.StringVar(&sf.logFormat, "log-format", "text", "the log `FORMAT`, text or json; logs go to stderr")
	f.StringVar(&sf.logLevel, "log-level", "info", "the least `LEVEL` logged: debug, info, warn or error")
	f.DurationVar(&sf.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take before the broker closes at once")
	f.DurationVar(&sf.heartbeat, "heartbeat", lmx.DefaultHeartbeat, "how often clients send a heartbeat")
	f.DurationVar(&sf.sessionTimeout, "session-timeout", lmx.DefaultSessionTimeout, "how long a silent session lives; then its leases are released")
	f.DurationVar(&sf.lockDelay, "lock-delay", 0, "how long a key waits before its next grant after a lease expired, was forced or lost its session")
	f.IntVar(&sf.maxSessions, "max-sessions", lmx.DefaultMaxSessions, "sessions open at once")
	f.IntVar(&sf.maxWaiters, "max-waiters", lmx.DefaultMaxWaitersPerSess, "queued lock requests per session")
	f.IntVar(&sf.maxKeyLen, "max-key-len", lmx.DefaultMaxKeyLen, "the longest key, in bytes")
	f.IntVar(&sf.maxFrame, "max-frame", lmx.DefaultMaxFrame, "the largest frame, in bytes")
	f.StringVar(&sf.socketMode, "socket-mode", "0600", "the permissions of Unix sockets, in `OCTAL`")
	f.fromEnv("listen", "token", "tls-cert", "tls-key", "tls-client-ca", "metrics", "log-format", "log-level",
		"shutdown-timeout", "heartbeat", "session-timeout", "lock-delay", "max-sessions", "max-waiters",
		"max-key-len", "max-frame", "socket-mode")
	f.list["listen"] = true
	return sf
}

func cmdStart(c *cli, cmd *command, args []string) error {
	f := c.newFlags(cmd)
	sf := addStartFlags(f)
	if _, err := f.parseArgs(args, 0); err != nil {
		return err
	}
	logger, err := newLogger(c.stderr, sf.logFormat, sf.logLevel)
	if err != nil {
		return err
	}
	opts, err := sf.brokerOptions(logger)
	if err != nil {
		return err
	}
	listen := sf.listen
	if len(listen) == 0 {
		listen = defaultAddrs(c.getenv)
	}
	b := lmx.NewBroker(opts...)
	srv, urls, metricsURL, err := serve(b, listen, sf.metrics, logger)
	if err != nil {
		b.Close()
		return err
	}
	attrs := []any{"listen", urls, "pid", os.Getpid()}
	if metricsURL != "" {
		attrs = append(attrs, "metrics", metricsURL)
	}
	if sf.tlsCert != "" {
		attrs = append(attrs, "tls", true, "mtls", sf.tlsClientCA != "")
	}
	logger.Info("lmx broker ready", attrs...)

	sig := <-c.signals
	logger.Info("lmx broker stopping", "signal", sig.String(), "timeout", sf.shutdownTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), sf.shutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		err := b.Shutdown(ctx)
		if srv != nil {
			if srv.Shutdown(ctx) != nil {
				srv.Close()
			}
		}
		done <- err
	}()
	select {
	case err = <-done:
	case sig := <-c.signals:
		logger.Warn("lmx broker closing at once", "signal", sig.String())
		cancel()
		err = <-done
	}
	if err != nil {
		logger.Error("lmx broker stopped abruptly", "err", err)
		return withCode(exitError, nil)
	}
	logger.Info("lmx broker stopped")
	return nil
}

// newLogger makes the logger --log-format and --log-level ask for.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level %q: not debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format %q: not text or json", format)
}

// brokerOptions returns the broker options the flags ask for.
func (sf *startFlags) brokerOptions(logger *slog.Logger) ([]lmx.BrokerOption, error) {
	mode, err := strconv.ParseUint(sf.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return nil, usageErrorf("--socket-mode %q: not permissions in octal, such as 0660", sf.socketMode)
	}
	for name, v := range map[string]int{"--max-sessions": sf.maxSessions, "--max-waiters": sf.maxWaiters, "--max-key-len": sf.maxKeyLen, "--max-frame": sf.maxFrame} {
		if v <= 0 {
			return nil, usageErrorf("%s must be positive", name)
		}
	}
	if sf.heartbeat <= 0 || sf.sessionTimeout <= 0 || sf.shutdownTimeout <= 0 || sf.lockDelay < 0 {
		return nil, usageErrorf("--heartbeat, --session-timeout and --shutdown-timeout must be positive, --lock-delay not negative")
	}
	opts := []lmx.BrokerOption{
		lmx.WithLogger(logger),
		lmx.WithAuthToken(sf.token),
		lmx.WithHeartbeat(sf.heartbeat, sf.sessionTimeout),
		lmx.WithLockDelay(sf.lockDelay),
		lmx.WithMaxSessions(sf.maxSessions),
		lmx.WithMaxWaiters(sf.maxWaiters),
		lmx.WithMaxKeyLen(sf.maxKeyLen),
		lmx.WithMaxFrame(sf.maxFrame),
		lmx.WithSocketMode(os.FileMode(mode)),
	}
	switch {
	case (sf.tlsCert == "") != (sf.tlsKey == ""):
		return nil, usageErrorf("--tls-cert and --tls-key go together")
	case sf.tlsCert == "" && sf.tlsClientCA != "":
		return nil, usageErrorf("--tls-client-ca needs --tls-cert and --tls-key")
	case sf.tlsCert == "":
		return opts, nil
	}
	cert, err := tls.LoadX509KeyPair(sf.tlsCert, sf.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("broker certificate: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if sf.tlsClientCA != "" {
		pool, err := loadPool(sf.tlsClientCA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return append(opts, lmx.WithTLS(cfg)), nil
}

// serve makes b listen at each of listen, and serves its metrics on
// metricsAddr unless it is empty. It returns the metrics server (or nil),
// the URLs b listens at (with the ports chosen), and the metrics URL.
func serve(b *lmx.Broker, listen []string, metricsAddr string, logger *slog.Logger) (*http.Server, []string, string, error) {
	var urls []string
	for _, u := range listen {
		// livemutex+tcp:// and livemutex+unix:// serve live-mutex's protocol.
		rest, lm := strings.CutPrefix(u, "livemutex+")
		network, address, err := lmx.SplitAddr(rest)
		if err != nil || lm && !strings.Contains(rest, "://") {
			return nil, nil, "", usageErrorf("--listen: %v", cmp.Or(err, fmt.Errorf("%q: livemutex+ needs tcp:// or unix://", u)))
		}
		listen, scheme := b.Listen, network
		if lm {
			listen, scheme = b.ListenLiveMutex, "livemutex+"+network
		}
		a, err := listen(network, address)
		if err != nil {
			return nil, nil, "", fmt.Errorf("%s: %w", u, err)
		}
		urls = append(urls, scheme+"://"+a.String())
	}
	if metricsAddr == "" {
		return nil, urls, "", nil
	}
	ln, err := net.Listen("tcp", metricsAddr)
	if err != nil {
		return nil, nil, "", fmt.Errorf("--metrics: %w", err)
	}
	srv := &http.Server{
		Handler:           metricsHandler(b, logger),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server", "err", err)
		}
	}()
	return srv, urls, "http://" + ln.Addr().String() + "/metrics", nil
}
