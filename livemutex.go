package lmx

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// The live-mutex door: the NDJSON protocol of the live-mutex Node package
// (0.2.x), served on the broker's own table, so that its Node client locks
// side by side with lmx clients. LIVEMUTEX.md describes what is implemented.
// Every request maps onto the table calls the native door makes (begin,
// Release, ForceUnlock, Inspect, List, sessionEnded); no lock semantics live
// here.

// LiveMutexVersion is the live-mutex version this door speaks: clients of
// 0.2.x are accepted, others are answered version-mismatch.
const LiveMutexVersion = "0.2.25"

// MaxLiveMutexLine is the longest NDJSON line the live-mutex door reads. A
// longer line is discarded, with a logged warning; the connection lives on.
const MaxLiveMutexLine = 1 << 20

// liveMutexDefaultTTL is live-mutex's lockExpiresAfter: the TTL of a lock
// asked with no ttl, or ttl 0.
const liveMutexDefaultTTL = 5000 * time.Millisecond

// lmOwnerPrefix namespaces the Owner of live-mutex leases, whose value is
// the live-mutex lock id (the uuid of the lock request).
const lmOwnerPrefix = "livemutex:"

// ListenLiveMutex listens on network ("tcp", "tcp4", "tcp6" or "unix") at
// address and serves the broker's lock table there in the background, to
// clients of the live-mutex Node package. It returns the address it listens
// on. Unix sockets get WithSocketMode's permissions; there is no TLS nor
// auth, as live-mutex has neither.
func (b *Broker) ListenLiveMutex(network, address string) (net.Addr, error) {
	return b.listen(network, address, "listen live-mutex", nil, b.ServeLiveMutexConn)
}

// ServeLiveMutex serves the live-mutex protocol on connections accepted
// from l, until l fails or the broker shuts down; then it returns
// ErrClosed. The caller owns l; Shutdown and Close close it.
func (b *Broker) ServeLiveMutex(l net.Listener) error {
	if !b.srv.track(l) {
		return ErrClosed
	}
	return b.serve(l, "listen live-mutex", b.ServeLiveMutexConn)
}

// ServeLiveMutexConn serves one connection, already accepted, with the
// live-mutex protocol, in the background.
func (b *Broker) ServeLiveMutexConn(nc net.Conn) {
	c := &lmConn{
		leases:   make(map[string]*Lease),
		waits:    make(map[string]*Lease),
		gone:     make(map[string]struct{}),
		manys:    make(map[string]*lmMany),
		goneMany: make(map[string][]string),
	}
	c.init(b, nc, c, "live-mutex session")
	c.serve()
}

// An lmConn is one live-mutex client connection: a conn, like a native
// session, and the leaseHook of its own leases (an lmMany is that of its
// keys' leases). Its mu is taken under the shard's mu, by the hooks; no
// table call is made holding it.
type lmConn struct {
	conn
	lmNoChain

	mu          sync.Mutex
	leases      map[string]*Lease   // held, by live-mutex lock id; guarded by mu
	waits       map[string]*Lease   // queued, by lock id; guarded by mu
	gone        map[string]struct{} // lock ids lost (expired, forced); guarded by mu
	manys       map[string]*lmMany  // acquire-many requests, taking or held, by lock id; guarded by mu
	manyWaiting int                 // of manys, those still taking their keys; guarded by mu
	goneMany    map[string][]string // keys of acquire-many locks lost, by lock id; guarded by mu
	over        bool                // guarded by mu

	mismatch bool // the client's version is refused; reader only
}

// maxGone bounds lmConn.gone: past it the record starts afresh.
const maxGone = 4096

// open implements protocol: live-mutex has no handshake.
func (c *lmConn) open(log *slog.Logger) (*slog.Logger, error) {
	return log.With("protocol", "live-mutex"), c.register()
}

// closing implements protocol: live-mutex has no answer that tells a
// waiting client the broker is going.
func (c *lmConn) closing() {}

// read handles lines until the connection fails.
func (c *lmConn) read() error {
	br := bufio.NewReaderSize(c.nc, 16<<10)
	var long []byte     // a line longer than br's buffer, gathered
	discarding := false // the line is over MaxLiveMutexLine: skip to its end
	for {
		if br.Buffered() == 0 {
			if err := c.idle(); err != nil {
				return err
			}
		}
		chunk, err := br.ReadSlice('\n')
		c.handling.Store(true)
		if errors.Is(err, bufio.ErrBufferFull) {
			if !discarding {
				long = append(long, chunk...)
				if len(long) > MaxLiveMutexLine {
					c.b.cfg.logger.Warn("lmx: live-mutex line too long, discarded", "remote", c.nc.RemoteAddr().String(), "limit", MaxLiveMutexLine)
					discarding, long = true, nil
				}
			}
			continue
		}
		if err != nil {
			return err
		}
		line := chunk
		if discarding {
			discarding = false
			continue
		}
		if long != nil {
			long = append(long, chunk...)
			if len(long) > MaxLiveMutexLine+1 {
				c.b.cfg.logger.Warn("lmx: live-mutex line too long, discarded", "remote", c.nc.RemoteAddr().String(), "limit", MaxLiveMutexLine)
				long = nil
				continue
			}
			line, long = long, nil
		}
		if c.handle(bytes.TrimSpace(line)) {
			c.handling.Store(false)
			c.out.drain()
			return io.EOF
		}
	}
}

// lmRequest is every field a live-mutex client sends that the door reads.
type lmRequest struct {
	Type                string          `json:"type"`
	UUID                string          `json:"uuid"`
	Key                 json.RawMessage `json:"key"`
	LockID              string          `json:"_uuid"`
	LockUUID            string          `json:"lockUuid"`
	Keys                json.RawMessage `json:"keys"`
	Wait                *bool           `json:"wait"`
	TTL                 json.RawMessage `json:"ttl"`
	Max                 json.RawMessage `json:"max"`
	Force               bool            `json:"force"`
	RetryCount          int             `json:"retryCount"`
	KeepLocksAfterDeath bool            `json:"keepLocksAfterDeath"`
	Value               string          `json:"value"`
	Timestamp           json.RawMessage `json:"timestamp"`
}

// key returns the request's key: a JSON string, or a number as its text
// (the Node client compares String(key)).
func (r *lmRequest) key() string {
	var s string
	if json.Unmarshal(r.Key, &s) == nil {
		return s
	}
	if len(r.Key) > 0 && (r.Key[0] == '-' || r.Key[0] >= '0' && r.Key[0] <= '9') {
		return string(r.Key)
	}
	return ""
}

// handle answers one line, and reports whether the connection is to end.
func (c *lmConn) handle(line []byte) bool {
	if len(line) == 0 {
		return false
	}
	var r lmRequest
	if err := json.Unmarshal(line, &r); err != nil {
		c.b.cfg.logger.Warn("lmx: live-mutex line is not a JSON object, ignored", "remote", c.nc.RemoteAddr().String(), "err", err, "line", truncate(line, 80))
		return false
	}
	if c.mismatch {
		return r.Type == "version-mismatch-confirmed"
	}
	switch r.Type {
	case "version":
		c.version(r.Value)
	case "version-mismatch-confirmed":
		return true
	case "lock":
		c.lock(&r)
	case "unlock":
		c.unlock(&r)
	case "lock-received":
		// Grants need no acknowledgement here: a grant stays with its
		// connection until released, lost with it, or expired.
	case "lock-received-rejected", "lock-client-timeout", "lock-client-error":
		c.abandon(r.key(), r.UUID)
	case "acquire-many":
		c.acquireMany(&r)
	case "release-many":
		c.releaseMany(&r)
	case "ls":
		c.ls(&r)
	case "lock-info-request":
		c.lockInfo(&r)
	case "ping":
		ts := r.Timestamp
		if len(ts) == 0 {
			ts = json.RawMessage("null")
		}
		c.reply(map[string]any{"uuid": r.UUID, "type": "pong", "timestamp": ts, "serverTimestamp": time.Now().UnixMilli(), "ping": true})
	default:
		c.b.cfg.logger.Warn("lmx: live-mutex request of unknown type", "remote", c.nc.RemoteAddr().String(), "type", r.Type)
		c.reply(map[string]any{"key": r.key(), "uuid": r.UUID, "error": "Malformed data sent to Live-Mutex broker."})
	}
	return false
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// version checks the client's version as live-mutex does: the major parts
// equal and the minor parts starting with the same character.
func (c *lmConn) version(v string) {
	if lmCompatible(v, LiveMutexVersion) {
		return
	}
	c.mismatch = true
	c.reply(map[string]any{"type": "version-mismatch", "versions": map[string]string{"clientVersion": v, "brokerVersion": LiveMutexVersion}})
	c.end()
	// live-mutex waits 2s for version-mismatch-confirmed, then hangs up.
	c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
}

func lmCompatible(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	if len(pa) < 2 || len(pb) < 2 || pa[0] != pb[0] || pa[1] == "" || pb[1] == "" {
		return false
	}
	return pa[1][0] == pb[1][0]
}

// reply adds v, as one line, to what the reader flushes.
func (c *lmConn) reply(v any) { c.conn.reply(lmLine(v)) }

// push adds v, as one line, from a table hook.
func (c *lmConn) push(v any) { c.conn.push(lmLine(v)) }

func lmLine(v any) func([]byte) []byte {
	p, err := json.Marshal(v)
	if err != nil { // only plain values are marshalled
		panic(err)
	}
	return func(b []byte) []byte { return append(append(b, p...), '\n') }
}

// lmLock is the reply to a lock request, field names as live-mutex's.
type lmLock struct {
	ReadersCount       int    `json:"readersCount"`
	UUID               string `json:"uuid"`
	LockRequestCount   int    `json:"lockRequestCount"`
	Key                string `json:"key"`
	Type               string `json:"type"`
	Acquired           bool   `json:"acquired"`
	FencingToken       uint64 `json:"fencingToken,omitempty"`
	FencingTokenString string `json:"fencingTokenString,omitempty"`
	Error              string `json:"error,omitempty"`
}

func (c *lmConn) lock(r *lmRequest) {
	key, id := r.key(), r.UUID
	refuse := func(msg string) {
		c.reply(&lmLock{UUID: id, Key: key, Type: "lock", Error: msg})
	}
	if id == "" {
		refuse("lock request without a uuid")
		return
	}
	if err := c.b.check(key); err != nil {
		refuse(err.Error())
		return
	}
	req := defaultRequest()
	req.owner = lmOwnerPrefix + id
	req.ownLimit = true // max null: the key's own limit, or 1
	if len(r.Max) > 0 && string(r.Max) != "null" {
		n, err := strconv.Atoi(string(r.Max))
		if err != nil || n < 1 {
			refuse("`max` must be a positive integer (>= 1), got " + truncate(r.Max, 40))
			return
		}
		req.limit, req.ownLimit = n, false
	}
	ttl, err := lmTTL(r.TTL)
	if err != nil {
		refuse(err.Error())
		return
	}
	req.ttl = ttl
	// keepLocksAfterDeath keeps a lock past its connection only with a
	// TTL: a lock with none would outlive everyone.
	req.keepOnDisconnect = r.KeepLocksAfterDeath && req.ttl > 0
	if r.Force || r.RetryCount > 0 {
		req.priority = 1 // live-mutex puts these at the front of the queue
	}
	if err := req.validate(); err != nil {
		refuse(err.Error())
		return
	}

	c.mu.Lock()
	held, waiting := c.leases[id], c.waits[id]
	n := len(c.waits) + c.manyWaiting
	c.mu.Unlock()
	switch {
	case held != nil: // a retry whose grant crossed it: grant again
		c.reply(&lmLock{UUID: id, Key: key, Type: "lock", Acquired: true, FencingToken: held.token, FencingTokenString: strconv.FormatUint(held.token, 10)})
		return
	case waiting != nil: // a retry of a queued request: it stays queued once
		c.reply(&lmLock{UUID: id, Key: key, Type: "lock"})
		return
	case n >= c.b.cfg.maxWaitersPerSess:
		refuse(fmt.Sprintf("%d requests of this connection wait already", n))
		return
	}
	if _, _, err := c.b.shardFor(key).begin(key, &req, true, c, 0); err != nil {
		refuse(err.Error())
	}
}

// lmTTL reads a live-mutex ttl: milliseconds, null for none, missing or 0
// for live-mutex's default.
func lmTTL(raw json.RawMessage) (time.Duration, error) {
	switch string(raw) {
	case "", "0":
		return liveMutexDefaultTTL, nil
	case "null":
		return 0, nil
	}
	ms, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || ms < 0 || ms > float64(1<<40) {
		return 0, errors.New("`ttl` must be a number of milliseconds or null, got " + truncate(raw, 40))
	}
	if d := time.Duration(ms * float64(time.Millisecond)); d > 0 {
		return d, nil
	}
	return liveMutexDefaultTTL, nil
}

// lockID returns the live-mutex lock id of a lease asked through this door.
func lmLockID(l *Lease) string { return strings.TrimPrefix(l.owner(), lmOwnerPrefix) }

// queued implements leaseHook: live-mutex answers a queued request at
// once with acquired:false.
func (c *lmConn) queued(l *Lease, _ uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return
	}
	id := lmLockID(l)
	c.waits[id] = l
	c.push(&lmLock{UUID: id, Key: l.key, Type: "lock", LockRequestCount: l.waitersLocked()})
}

// granted implements leaseHook.
func (c *lmConn) granted(l *Lease, _ uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return
	}
	id := lmLockID(l)
	delete(c.waits, id)
	c.leases[id] = l
	c.push(&lmLock{UUID: id, Key: l.key, Type: "lock", Acquired: true, LockRequestCount: l.waitersLocked(),
		FencingToken: l.token, FencingTokenString: strconv.FormatUint(l.token, 10)})
}

// lmNoChain holds the leaseHook methods that the live-mutex door's hooks
// (lmConn and lmMany) share: live-mutex has no preemption to tell of, and
// its clients take no hand-offs, so the table names none of their waiters
// and asks them for no Stop.
type lmNoChain struct{}

func (lmNoChain) revoked(*Lease)          {}
func (lmNoChain) chains() bool            { return false }
func (lmNoChain) named(*Lease, ulid.ULID) {}
func (lmNoChain) stop(string) uint32      { return 0 }

// ended implements leaseHook. live-mutex tells a holder nothing when its
// lock is lost; a later unlock of it succeeds, as there.
func (c *lmConn) ended(l *Lease, reason error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return
	}
	id := lmLockID(l)
	if c.leases[id] == l {
		delete(c.leases, id)
	}
	if reason != ErrReleased {
		if len(c.gone) >= maxGone {
			clear(c.gone)
		}
		c.gone[id] = struct{}{}
	}
}

// lmUnlock is the reply to an unlock request.
type lmUnlock struct {
	UUID             string `json:"uuid"`
	Key              string `json:"key"`
	LockRequestCount int    `json:"lockRequestCount"`
	Type             string `json:"type"`
	Unlocked         bool   `json:"unlocked"`
	Warning          string `json:"warning,omitempty"`
	Error            string `json:"error,omitempty"`
}

func (c *lmConn) unlock(r *lmRequest) {
	b := c.b
	ctx := context.Background()
	key, lockID := r.key(), r.LockID
	rep := lmUnlock{UUID: r.UUID, Key: key, Type: "unlock", Unlocked: true}
	replied := false
	defer func() {
		if !replied {
			c.reply(&rep)
		}
	}()
	if err := b.check(key); err != nil {
		rep.Unlocked, rep.Error = false, err.Error()
		return
	}
	if lockID == "" {
		if !r.Force {
			rep.Unlocked, rep.Error = false, "You need to pass the correct uuid, or use force."
			return
		}
		if err := b.ForceUnlock(ctx, key); errors.Is(err, ErrNotHeld) {
			rep.Warning = fmt.Sprintf("no lock with key => %q.", key)
		} else if err != nil {
			rep.Unlocked, rep.Error = false, err.Error()
		}
		return
	}
	c.mu.Lock()
	l := c.leases[lockID]
	_, lost := c.gone[lockID]
	c.mu.Unlock()
	if l != nil && l.key == key {
		// Held through this connection: unlocked, whether Release ends it
		// or its TTL or a force unlock just did. The reply goes before the
		// hand-off's grant, as live-mutex sends them.
		c.reply(&rep)
		replied = true
		b.Release(ctx, key, l.ID())
		return
	}
	// Another connection's lock, or one kept after its connection died.
	ki, err := b.Inspect(ctx, key)
	if err != nil {
		rep.Unlocked, rep.Error = false, err.Error()
		return
	}
	rep.LockRequestCount = len(ki.Waiters)
	for _, h := range ki.Holders {
		if h.Owner == lmOwnerPrefix+lockID {
			if b.Release(ctx, key, h.ID) == nil {
				return
			}
		}
	}
	switch {
	case len(ki.Holders) == 0 && len(ki.Waiters) == 0:
		rep.Warning = fmt.Sprintf("no lock with key => %q.", key)
	case lost:
		// expired or forced already: live-mutex says unlocked
	default:
		rep.Unlocked, rep.Error = false, "You need to pass the correct uuid, or use force."
	}
}

// abandon drops a request its client gave up on: out of the queue if it
// waits, released if the grant came too late.
func (c *lmConn) abandon(key, id string) {
	c.mu.Lock()
	w, l := c.waits[id], c.leases[id]
	delete(c.waits, id)
	c.mu.Unlock()
	if w != nil && w.key == key && !c.b.shardFor(key).dequeue(w) {
		c.mu.Lock()
		l = c.leases[id] // granted meanwhile
		c.mu.Unlock()
	}
	if l != nil && l.key == key {
		c.b.Release(context.Background(), key, l.ID())
	}
}

func (c *lmConn) ls(r *lmRequest) {
	keys, err := c.b.List(context.Background(), "", MaxListLimit)
	list := make([]string, 0, len(keys))
	for _, k := range keys {
		list = append(list, k.Key)
	}
	rep := map[string]any{"ls_result": list, "uuid": r.UUID}
	if err != nil {
		rep["error"] = err.Error()
	}
	c.reply(rep)
}

func (c *lmConn) lockInfo(r *lmRequest) {
	key := r.key()
	ki, err := c.b.Inspect(context.Background(), key)
	if err != nil {
		c.reply(map[string]any{"key": key, "uuid": r.UUID, "type": "lock-info-response", "error": err.Error()})
		return
	}
	holders := make([]string, 0, len(ki.Holders))
	for _, h := range ki.Holders {
		if id, ok := strings.CutPrefix(h.Owner, lmOwnerPrefix); ok {
			holders = append(holders, id)
		} else {
			holders = append(holders, h.ID.String()) // a native lmx lease
		}
	}
	c.reply(map[string]any{"key": key, "uuid": r.UUID, "lockholderUUIDs": holders,
		"lockRequestCount": len(ki.Waiters), "isLocked": len(ki.Holders) > 0, "lockInfo": true,
		"type": "lock-info-response"})
}

// end settles the connection's leases and waiters, only its own, and
// returns how many leases it released.
func (c *lmConn) end() int {
	c.mu.Lock()
	if c.over {
		c.mu.Unlock()
		return 0
	}
	c.over = true
	leases, waits := c.leases, c.waits
	c.leases, c.waits = nil, nil
	held := make(map[*lmMany]*Lease)
	taking := 0 // keys held by requests withdrawn here: they give them back
	for _, m := range c.manys {
		if m.state == manyTaking {
			taking += m.taken
		}
		if l := m.endLocked(); l != nil {
			held[m] = l
		}
	}
	c.manys = nil
	c.mu.Unlock()
	for _, l := range waits {
		c.b.shardFor(l.key).sessionEnded(l, c)
	}
	released := taking
	for _, l := range leases {
		if !l.keep {
			released++
		}
		c.b.shardFor(l.key).sessionEnded(l, c)
	}
	for m, lock := range held {
		// Each key is settled alone: those kept are released key by key.
		for _, l := range disband(lock, errSessionLost) {
			if !l.keep {
				released++
			}
			c.b.shardFor(l.key).sessionEnded(l, m)
		}
	}
	return released
}
