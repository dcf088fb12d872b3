package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lmx-go/lmx"
)

// defaultTCP is where a client looks for a broker after the default socket,
// and where start listens by default beside it. Port 6970 is live-mutex's,
// where an lmx broker serves live-mutex clients when asked to
// (livemutex+tcp://); 6972 is where the README serves metrics.
const defaultTCP = "tcp://127.0.0.1:6971"

const addrHelp = `Addresses are URLs as lmx.Dial reads them: unix:///path/to/socket,
tcp://host:port, or host:port; a bare path (/run/lmx/lmx.sock, ./lmx.sock) is
a Unix socket. Without --addr or $LMX_ADDR a client tries the default socket,
$XDG_RUNTIME_DIR/lmx.sock (/tmp/lmx-$UID.sock when XDG_RUNTIME_DIR is unset),
and then ` + defaultTCP + `.`

// defaultSocket is the path of the default Unix socket.
func defaultSocket(getenv func(string) string) string {
	if d := getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "lmx.sock")
	}
	return fmt.Sprintf("/tmp/lmx-%d.sock", os.Getuid())
}

// defaultAddrs are where a client looks for a broker when not told.
func defaultAddrs(getenv func(string) string) []string {
	return []string{"unix://" + defaultSocket(getenv), defaultTCP}
}

// connFlags say how a client command reaches the broker.
type connFlags struct {
	addr          string
	token         string
	tls           bool
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string
	timeout       time.Duration
}

// addConnFlags adds the connection flags to f.
func addConnFlags(f *cmdFlags) *connFlags {
	cf := new(connFlags)
	f.StringVar(&cf.addr, "addr", "", "the broker's `URL` (default: the default socket, then "+defaultTCP+")")
	f.StringVar(&cf.token, "token", "", "the broker's auth token")
	f.BoolVar(&cf.tls, "tls", false, "speak TLS over TCP, trusting the system's CAs unless --tls-ca")
	f.StringVar(&cf.tlsCA, "tls-ca", "", "PEM `FILE` of the CAs that sign the broker's certificate (implies --tls)")
	f.StringVar(&cf.tlsCert, "tls-cert", "", "PEM `FILE` of a client certificate, for mutual TLS (implies --tls)")
	f.StringVar(&cf.tlsKey, "tls-key", "", "PEM `FILE` of the client certificate's key")
	f.StringVar(&cf.tlsServerName, "tls-server-name", "", "the `NAME` the broker's certificate must have (default: the host of --addr)")
	f.DurationVar(&cf.timeout, "connect-timeout", 5*time.Second, "how long connecting may take")
	names := []string{"addr", "token", "tls", "tls-ca", "tls-cert", "tls-key", "tls-server-name", "connect-timeout"}
	f.fromEnv(names...)
	for _, n := range names {
		f.conn[n] = true
	}
	return cf
}

// options returns the client options the flags ask for.
func (cf *connFlags) options() ([]lmx.ClientOption, error) {
	opts := []lmx.ClientOption{lmx.WithDialToken(cf.token)}
	if (cf.tlsCert == "") != (cf.tlsKey == "") {
		return nil, usageErrorf("--tls-cert and --tls-key go together")
	}
	if cf.timeout <= 0 {
		return nil, usageErrorf("--connect-timeout must be positive")
	}
	if !cf.tls && cf.tlsCA == "" && cf.tlsCert == "" {
		return opts, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cf.tlsServerName}
	if cf.tlsCA != "" {
		pool, err := loadPool(cf.tlsCA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if cf.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(cf.tlsCert, cf.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return append(opts, lmx.WithDialTLS(cfg)), nil
}

// loadPool reads PEM certificates into a pool.
func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}

// A clientCmd is a client command's flags, --json and the connection flags
// among them, and, once connect has run, what close ends.
type clientCmd struct {
	*cmdFlags
	c       *cli
	jsonOut *bool
	conn    *connFlags
	cl      *lmx.Client
	cancel  context.CancelFunc
}

// clientFlags makes cmd's flags with --json, which jsonHelp describes, and
// the connection flags; the command adds its own.
func (c *cli) clientFlags(cmd *command, jsonHelp string) *clientCmd {
	f := c.newFlags(cmd)
	return &clientCmd{cmdFlags: f, c: c, jsonOut: f.Bool("json", false, jsonHelp), conn: addConnFlags(f)}
}

// connect connects to the broker and returns a context that the first
// signal cancels, the client and the address that answered. The caller
// defers cc.close once connect succeeds.
func (cc *clientCmd) connect() (context.Context, *lmx.Client, string, error) {
	ctx, cancel := cc.c.interruptible()
	cl, addr, err := cc.c.connect(ctx, cc.conn)
	if err != nil {
		cancel()
		return nil, nil, "", err
	}
	cc.cl, cc.cancel = cl, cancel
	return ctx, cl, addr, nil
}

// close closes the client and cancels the context connect returned.
func (cc *clientCmd) close() {
	cc.cl.Close()
	cc.cancel()
}

// connect dials the broker that cf names, or else the default addresses in
// turn, and returns the client and the address that answered. A broker
// that cannot be reached is exitUnreachable; one that answers and refuses
// is not.
func (c *cli) connect(ctx context.Context, cf *connFlags) (*lmx.Client, string, error) {
	opts, err := cf.options()
	if err != nil {
		return nil, "", err
	}
	addrs := []string{cf.addr}
	if cf.addr == "" {
		addrs = defaultAddrs(c.getenv)
	}
	for _, a := range addrs {
		if _, _, err := lmx.SplitAddr(a); err != nil {
			return nil, "", usageErrorf("--addr: %v", err)
		}
	}
	var failed []string
	for _, a := range addrs {
		dctx, cancel := context.WithTimeout(ctx, cf.timeout)
		cl, err := lmx.Dial(dctx, a, opts...)
		cancel()
		switch {
		case err == nil:
			return cl, a, nil
		case ctx.Err() != nil:
			return nil, "", ctx.Err()
		case !unreachable(err):
			return nil, "", fmt.Errorf("%s: %w", a, err)
		}
		failed = append(failed, fmt.Sprintf("%s (%v)", a, cause(err)))
	}
	return nil, "", withCode(exitUnreachable, fmt.Errorf("no broker answers at %s", strings.Join(failed, " nor at ")))
}

// cause returns the system's reason for a failed dial, such as "connect:
// connection refused", without the layers that repeat the address.
func cause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// unreachable tells a broker that could not be reached from one that
// answered and refused (a token, TLS, a limit, another protocol).
func unreachable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && (op.Op == "remote error" || op.Op == "local error") {
		return false // TLS alerts: the broker refused the handshake
	}
	var (
		alert  tls.AlertError
		verify *tls.CertificateVerificationError
		record tls.RecordHeaderError
		ca     x509.UnknownAuthorityError
		host   x509.HostnameError
		cert   x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, lmx.ErrAuth), errors.Is(err, lmx.ErrProtocol), errors.Is(err, lmx.ErrBusy),
		errors.As(err, &alert), errors.As(err, &verify), errors.As(err, &record),
		errors.As(err, &ca), errors.As(err, &host), errors.As(err, &cert):
		return false
	}
	return true
}
