package lmx

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/oklog/ulid/v2"
)

// A session is one client connection to the broker. Its reader handles each
// request inline and never waits for a grant: a queued Lock is answered by
// the table's hook (granted, below) when the key is handed to it. Replies
// are gathered in the outbox and written once per batch of requests read
// (see conn).
type session struct {
	conn
	id ulid.ULID

	mu      sync.Mutex
	leases  map[ulid.ULID]*Lease // held through this session; guarded by mu
	waits   map[uint32]*Lease    // queued Locks by request id; guarded by mu
	watches map[uint32]*watcher  // by request id; guarded by mu
	stops   uint32               // the last Stop's number; guarded by mu
	over    bool                 // the connection is gone; guarded by mu
}

func newSession(b *Broker, nc net.Conn) *session {
	s := &session{
		leases:  make(map[ulid.ULID]*Lease),
		waits:   make(map[uint32]*Lease),
		watches: make(map[uint32]*watcher),
	}
	s.init(b, nc, s, "session")
	return s
}

// open implements protocol: the handshake.
func (s *session) open(log *slog.Logger) (*slog.Logger, error) {
	if err := s.handshake(); err != nil {
		return log, err
	}
	return log.With("session", s.id.String()), nil
}

// isHangup reports whether err is a peer going away, not a fault.
func isHangup(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// handshake reads the client's Hello and answers Welcome, or an Error frame
// and an error.
func (s *session) handshake() error {
	cfg := &s.b.cfg
	s.nc.SetDeadline(time.Now().Add(cfg.sessionTimeout))
	refuse := func(code uint16, err error) error {
		s.out.send(func(b []byte) []byte { return appendError(b, 0, code, err.Error()) })
		return err
	}
	var hdr [headerLen]byte
	if _, err := io.ReadFull(s.nc, hdr[:]); err != nil {
		return err
	}
	h := parseHeader(hdr[:])
	if h.op != opHello || h.length > maxHelloLen {
		return refuse(codeProtocol, fmt.Errorf("%w: not an lmx client (first frame op 0x%02x, %d bytes)", ErrProtocol, h.op, h.length))
	}
	p := make([]byte, h.length)
	if _, err := io.ReadFull(s.nc, p); err != nil {
		return err
	}
	hello, err := decodeHello(p)
	if err != nil {
		return refuse(codeProtocol, fmt.Errorf("%w: not an lmx client (bad hello)", ErrProtocol))
	}
	if hello.version != protocolVersion {
		return refuse(codeProtocol, fmt.Errorf("%w: client speaks version %d, this broker %d", ErrProtocol, hello.version, protocolVersion))
	}
	if cfg.authToken != "" && subtle.ConstantTimeCompare([]byte(hello.token), []byte(cfg.authToken)) != 1 {
		return refuse(codeAuth, fmt.Errorf("%w: wrong auth token", ErrAuth))
	}
	if err := s.register(); err != nil {
		return refuse(errorCode(err), err)
	}
	s.id = ulid.Make()
	s.nc.SetDeadline(time.Time{})
	w := welcomeMsg{version: protocolVersion, session: s.id, heartbeat: cfg.heartbeat, timeout: cfg.sessionTimeout,
		maxFrame: uint64(cfg.maxFrame), maxKeyLen: uint64(cfg.maxKeyLen)}
	return s.out.send(func(b []byte) []byte { return appendWelcome(b, w) })
}

// maxHelloLen bounds a Hello: magic, version and an auth token.
const maxHelloLen = 4096

// read handles requests until the connection fails or goes silent for
// longer than the session timeout. An idle session spends its life blocked
// in the read that waits for its next request: that read is made from
// read's own small frame, not from under the frames that decode and handle
// a request, so that the parked reader uses under a quarter of an 8 KiB
// stack (counting the runtime's reserve) and the garbage collector halves
// a stack a deep request grew back to 4 KiB (TestIdleSessionStack).
func (s *session) read() error {
	rq := &requests{br: newBurstReader(s.nc)} // an idle session keeps 512 bytes, not 16 KiB
	for {
		if rq.br.Buffered() == 0 {
			if err := s.wait(rq); err != nil {
				return err
			}
			if err := rq.br.fill(); err != nil {
				return err
			}
		}
		if err := s.step(rq); err != nil {
			return err
		}
	}
}

// requests is what a session's reader keeps between requests, on the heap
// rather than on the stack it parks on.
type requests struct {
	br      *burstReader
	hdr     [headerLen]byte
	payload []byte // the last request's, reused
	rdl     deadline
	n       int // requests read
}

// step reads the next request and handles it. Before a read that may block
// in the middle of a request, the replies so far are flushed and the
// deadline renewed; so it is every 256 requests on a busy connection.
func (s *session) step(rq *requests) error {
	rq.n++
	if rq.br.Buffered() < headerLen || rq.n%256 == 0 {
		if err := s.wait(rq); err != nil {
			return err
		}
	}
	if _, err := io.ReadFull(rq.br, rq.hdr[:]); err != nil {
		return err
	}
	s.handling.Store(true)
	h := parseHeader(rq.hdr[:])
	if int64(h.length) > int64(s.b.cfg.maxFrame) {
		return s.tooLarge(h)
	}
	if cap(rq.payload) < int(h.length) {
		rq.payload = make([]byte, h.length)
	}
	p := rq.payload[:h.length]
	if rq.br.Buffered() < len(p) {
		if err := s.wait(rq); err != nil {
			return err
		}
	}
	if _, err := io.ReadFull(rq.br, p); err != nil {
		return err
	}
	s.handle(h, p)
	return nil
}

// wait flushes the replies so far and renews the read deadline, before a
// read that may block.
func (s *session) wait(rq *requests) error {
	if err := s.idle(); err != nil {
		return err
	}
	rq.rdl.renew(s.nc.SetReadDeadline, s.b.cfg.sessionTimeout)
	return nil
}

// tooLarge answers a request over the frame limit, and returns the error
// that ends the session.
func (s *session) tooLarge(h header) error {
	err := fmt.Errorf("%w: frame of %d bytes, the limit is %d", ErrProtocol, h.length, s.b.cfg.maxFrame)
	s.replyErr(h.id, err)
	s.out.drain()
	return err
}

func (s *session) replyOK(id uint32) {
	s.reply(func(b []byte) []byte { return appendEmpty(b, opOK, id) })
}

func (s *session) replyErr(id uint32, err error) {
	s.reply(func(b []byte) []byte { return appendError(b, id, errorCode(err), err.Error()) })
}

// handle answers one request.
func (s *session) handle(h header, p []byte) {
	ctx := context.Background() // the table never waits on the reader's behalf
	switch h.op {
	case opPing:
		s.reply(func(b []byte) []byte { return appendEmpty(b, opPong, h.id) })
	case opLock:
		s.lock(h, p)
	case opRelease:
		if key, id, err := decodeLeaseMsg(p); !s.malformed(h, err) {
			s.result(h.id, s.release(string(key), id))
		}
	case opExtend:
		if m, err := decodeExtend(p); !s.malformed(h, err) {
			s.extend(h.id, m)
		}
	case opForce:
		if key, err := decodeKey(p); !s.malformed(h, err) {
			s.result(h.id, s.b.ForceUnlock(ctx, key))
		}
	case opInspect:
		if key, err := decodeKey(p); !s.malformed(h, err) {
			s.inspect(h.id, key)
		}
	case opStats:
		s.stats(h.id)
	case opCancel:
		s.cancel(h.id)
	case opStopped:
		if m, err := decodeStop(p); !s.malformed(h, err) {
			s.stopped(h.id, m)
		}
	case opList:
		if m, err := decodeList(p); !s.malformed(h, err) {
			s.list(h.id, m)
		}
	case opWatch:
		if prefix, err := decodeKey(p); !s.malformed(h, err) {
			s.watch(h.id, prefix)
		}
	default:
		s.replyErr(h.id, fmt.Errorf("%w: unexpected op 0x%02x", ErrProtocol, h.op))
	}
}

// stats answers a Stats request. The Stats it reads are large: they stay
// off handle's frame, which every request's handling passes through.
func (s *session) stats(reqID uint32) {
	st, err := s.b.Stats(context.Background())
	if err != nil {
		s.replyErr(reqID, err)
		return
	}
	s.reply(func(b []byte) []byte { return appendStatsOK(b, reqID, &st) })
}

func (s *session) inspect(reqID uint32, key string) {
	ki, err := s.b.Inspect(context.Background(), key)
	if err != nil {
		s.replyErr(reqID, err)
		return
	}
	s.reply(func(b []byte) []byte { return appendInfo(b, reqID, &ki) })
}

func (s *session) list(reqID uint32, m listMsg) {
	keys, err := s.b.List(context.Background(), m.prefix, int(min(m.limit, MaxListLimit)))
	if err != nil {
		s.replyErr(reqID, err)
		return
	}
	s.reply(func(b []byte) []byte { return appendKeys(b, reqID, keys) })
}

// stopped takes the client's answer to a Stop; a stale one changes nothing.
func (s *session) stopped(reqID uint32, m stopMsg) {
	if err := s.b.check(m.key); err != nil {
		s.replyErr(reqID, err)
		return
	}
	s.b.shardFor(m.key).stopped(m.key, s, uint32(m.seq))
}

// release undoes one grant of the lease of key with lock id id. A lease of
// this session that it ends gets no Ended frame: the answer says so.
func (s *session) release(key string, id ulid.ULID) error {
	ended, err := s.b.release(key, id, s)
	if ended {
		s.mu.Lock()
		delete(s.leases, id)
		s.mu.Unlock()
	}
	return err
}

// malformed answers a request whose payload did not decode.
func (s *session) malformed(h header, err error) bool {
	if err != nil {
		s.replyErr(h.id, fmt.Errorf("%w: op 0x%02x: %v", ErrProtocol, h.op, err))
		return true
	}
	return false
}

// result answers a request that succeeds or fails with nothing to tell.
func (s *session) result(id uint32, err error) {
	if err != nil {
		s.replyErr(id, err)
		return
	}
	s.replyOK(id)
}

func (s *session) lock(h header, p []byte) {
	m, err := decodeLock(h.flags, p)
	if err != nil {
		s.replyErr(h.id, fmt.Errorf("%w: lock: %v", ErrProtocol, err))
		return
	}
	if err := s.b.check(m.key); err != nil {
		s.replyErr(h.id, err)
		return
	}
	if err := m.req.validate(); err != nil {
		s.replyErr(h.id, err)
		return
	}
	wait := m.flags&flagWait != 0
	if wait {
		s.mu.Lock()
		n, dup := len(s.waits), s.waits[h.id] != nil
		s.mu.Unlock()
		switch {
		case dup:
			s.replyErr(h.id, fmt.Errorf("%w: request id %d already waits", ErrProtocol, h.id))
			return
		case n >= s.b.cfg.maxWaitersPerSess:
			s.replyErr(h.id, fmt.Errorf("%w: %d requests of this session wait already", ErrBusy, n))
			return
		}
	}
	// The grant, now or later, is answered by granted.
	if _, _, err := s.b.shardFor(m.key).begin(m.key, &m.req, wait, s, h.id); err != nil {
		s.replyErr(h.id, err)
	}
}

func (s *session) extend(reqID uint32, m extendMsg) {
	exp, err := s.b.Extend(context.Background(), m.key, m.id, m.ttl)
	if err != nil {
		s.replyErr(reqID, err)
		return
	}
	s.reply(func(b []byte) []byte { return appendExpiry(b, reqID, exp) })
}

// watch streams events under prefix as Event frames answering reqID, until
// the client cancels it or the session ends.
func (s *session) watch(reqID uint32, prefix string) {
	s.mu.Lock()
	dup := s.watches[reqID] != nil || s.waits[reqID] != nil
	s.mu.Unlock()
	if dup {
		s.replyErr(reqID, fmt.Errorf("%w: request id %d is in use", ErrProtocol, reqID))
		return
	}
	w := &watcher{prefix: prefix, done: func() {}}
	w.sink = func(ev *Event) bool {
		ok := s.out.addIfRoom(maxWatchBacklog, func(b []byte) []byte { return appendEvent(b, reqID, ev) })
		if ok && !s.handling.Load() {
			s.wake()
		}
		return ok
	}
	s.mu.Lock()
	s.watches[reqID] = w
	s.mu.Unlock()
	s.b.watchers.add(w)
	if s.b.closed.Load() {
		s.b.unwatch(w)
	}
	s.replyOK(reqID)
}

// maxWatchBacklog is how much a session's outbox may hold before its watch
// events are dropped (and counted, for an EventLagged): a slow watcher lags,
// it does not grow memory nor cost the session its locks.
const maxWatchBacklog = 1 << 20

// cancel ends a watch, or takes a queued Lock out of its queue. If the key
// was granted first, the Granted frame is on its way and the client
// releases the lease.
func (s *session) cancel(reqID uint32) {
	s.mu.Lock()
	l, w := s.waits[reqID], s.watches[reqID]
	delete(s.waits, reqID)
	delete(s.watches, reqID)
	s.mu.Unlock()
	if w != nil {
		s.b.unwatch(w)
	}
	if l != nil && s.b.shardFor(l.key).dequeue(l) {
		s.reply(func(b []byte) []byte { return appendError(b, reqID, codeCanceled, "") })
	}
}

// queued implements leaseHook.
func (s *session) queued(l *Lease, reqID uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waits[reqID] = l
}

// granted implements leaseHook: it answers the request with the grant. Its
// frame goes out before any Ended frame for the lease, as both are added
// under the shard's mu.
func (s *session) granted(l *Lease, reqID uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.over {
		return // end settles the lease
	}
	delete(s.waits, reqID)
	s.leases[l.id] = l
	m := grantedMsg{id: l.id, token: l.token, exp: l.expiresLocked()}
	s.push(func(b []byte) []byte { return appendGranted(b, reqID, m) })
}

// named tells the client that its queued Lock l follows the lease pred:
// the client may hand the key on to it (see chain.go).
func (s *session) named(l *Lease, pred ulid.ULID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.over {
		return
	}
	reqID, m := l.x.reqID, nextMsg{pred: pred, id: l.id, token: l.token}
	s.push(func(b []byte) []byte { return appendNext(b, reqID, m) })
}

// stop asks the client to stop handing key on to the Locks named to it, and
// returns the number its answer will carry, never 0.
func (s *session) stop(key string) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stops++; s.stops == 0 {
		s.stops++
	}
	seq := s.stops
	if !s.over {
		m := stopMsg{key: key, seq: uint64(seq)}
		s.push(func(b []byte) []byte { return appendStop(b, opStop, m) })
	}
	return seq
}

// revoked implements leaseHook: it tells the client a waiter of higher
// priority wants the lease.
func (s *session) revoked(l *Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.over {
		return
	}
	m := leaseMsg{key: l.key, id: l.id}
	s.push(func(b []byte) []byte { return appendLeaseOp(b, opRevoke, 0, 0, m) })
}

// ended implements leaseHook: it tells the client its lease ended, for
// whatever reason but the client's own Release (see release).
func (s *session) ended(l *Lease, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.over {
		return
	}
	delete(s.leases, l.id)
	m, code := leaseMsg{key: l.key, id: l.id}, reasonCode(reason)
	s.push(func(b []byte) []byte { return appendLeaseOp(b, opEnded, code, 0, m) })
}

// end settles the session's leases and waiters once its connection is gone,
// and returns how many leases it released.
func (s *session) end() int {
	s.mu.Lock()
	s.over = true
	leases, waits, watches := s.leases, s.waits, s.watches
	s.leases, s.waits, s.watches = nil, nil, nil
	s.mu.Unlock()
	for _, w := range watches {
		s.b.unwatch(w)
	}
	for _, l := range waits {
		s.b.shardFor(l.key).sessionEnded(l, s)
	}
	released := 0
	for _, l := range leases {
		if !l.keep {
			released++
		}
		s.b.shardFor(l.key).sessionEnded(l, s)
	}
	return released
}

// closing implements protocol: it answers the session's queued Locks with
// ErrClosed.
func (s *session) closing() {
	s.mu.Lock()
	waits := make(map[uint32]*Lease, len(s.waits))
	for id, l := range s.waits {
		waits[id] = l
	}
	s.mu.Unlock()
	for id, l := range waits {
		if s.b.shardFor(l.key).dequeue(l) {
			s.replyErr(id, ErrClosed)
		}
	}
}
