package lmx

import (
	"log/slog"
	"net"
	"sync/atomic"
)

// A conn is what every connection the broker serves has, whatever protocol
// it speaks (the native session, session.go; live-mutex, livemutex.go): its
// outbox, the writer that flushes what table hooks add between the reader's
// batches (a goroutine started when a frame waits for it and ended when the
// outbox is empty, so that an idle connection keeps only its reader), its
// place among the broker's sessions, so that Shutdown and Close end it, and
// the run that ties them together.
type conn struct {
	b    *Broker
	nc   net.Conn
	p    protocol // the protocol spoken
	what string   // names the connection in the log: "session"
	out  outbox

	writerRuns atomic.Bool // a writer goroutine runs

	// handling is set while the reader handles a batch it will flush itself,
	// so that hooks firing meanwhile need not wake the writer.
	handling atomic.Bool
}

// A protocol is one protocol's side of a connection.
type protocol interface {
	// open admits the peer (a handshake, say) and registers the conn with
	// register, and returns log with what the connection's lines carry,
	// and why it refused the peer, if it did.
	open(log *slog.Logger) (*slog.Logger, error)
	// read handles requests until the connection fails.
	read() error
	// end settles the connection's leases and waiters once it is gone, and
	// returns how many leases it released.
	end() int
	// closing answers, on Shutdown, what the peer waits for and will not
	// get, before what it has to send is sent and the connection closed.
	closing()
}

func (c *conn) init(b *Broker, nc net.Conn, p protocol, what string) {
	c.b, c.nc, c.p, c.what = b, nc, p, what
	c.out = outbox{nc: nc, timeout: b.cfg.sessionTimeout}
}

// serve runs c in the background, or closes its connection if the broker
// is closing.
func (c *conn) serve() {
	if !c.b.srv.g.start(c.run) {
		c.nc.Close()
	}
}

// run admits the peer, reads until the connection fails and settles what
// the connection held. An idle connection's reader is parked under run: it
// keeps no defer and leaves admitting and settling to calls of their own,
// so as to keep its frame small (see session.read).
func (c *conn) run() {
	log := c.admit()
	if log == nil {
		return
	}
	err := c.p.read()
	c.finish(log, err)
}

// admit admits the peer and returns the connection's logger, or logs why
// it refused the peer, closes the connection and returns nil.
func (c *conn) admit() *slog.Logger {
	log, err := c.p.open(c.b.cfg.logger.With("remote", c.nc.RemoteAddr().String()))
	if err != nil {
		log.Warn("lmx: refused a client", "err", err)
		c.nc.Close()
		return nil
	}
	return log
}

// finish settles what the connection held once its reader failed with err,
// and closes it.
func (c *conn) finish(log *slog.Logger, err error) {
	c.b.srv.ends.ended(c.b.cfg.logger, log, c.what, err, c.p.end())
	c.b.srv.removeSession(c)
	c.nc.Close()
}

// register adds c to the broker's sessions, unless the broker is closing or
// has as many as it takes.
func (c *conn) register() error { return c.b.srv.addSession(c, c.b.cfg.maxSessions) }

// writer writes what hooks add while the reader is not handling a batch,
// until the outbox is empty.
func (c *conn) writer() {
	for {
		c.out.flush()
		c.writerRuns.Store(false)
		// A frame added before the Store found the writer running and
		// started none: write it.
		if !c.out.waiting() || !c.writerRuns.CompareAndSwap(false, true) {
			return
		}
	}
}

// idle flushes what the reader's batch added, before a read that may
// block: hooks firing from now on wake the writer.
func (c *conn) idle() error {
	c.handling.Store(false)
	return c.out.flush()
}

// push adds a frame from outside the reader's batch: from a table hook.
func (c *conn) push(f func([]byte) []byte) {
	if c.out.add(f) && !c.handling.Load() {
		c.wake()
	}
}

// wake has a writer flush: it starts one unless one runs. Table hooks call
// it under the locks of LOCKORDER.md's levels 1-4: starting a goroutine
// does not block.
func (c *conn) wake() {
	if c.writerRuns.CompareAndSwap(false, true) && !c.b.srv.g.start(c.writer) {
		c.writerRuns.Store(false) // the broker is closing: Shutdown drains the outbox
	}
}

// reply adds a frame to what the reader flushes at the end of its batch.
func (c *conn) reply(f func([]byte) []byte) { c.out.add(f) }

// shutdown answers, on Shutdown, what the peer waits for, sends what it
// has to send and closes the connection.
func (c *conn) shutdown() {
	c.p.closing()
	c.out.drain()
	c.nc.Close()
}
