package lmx

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// The codec: one encoder and one decoder per op, in the order of the op
// constants (wire.go) and of PROTOCOL.md. An encoder appends the whole frame
// to b; a decoder reads a payload and fails on a missing field or trailing
// bytes. Nothing else in the package builds or parses a payload.

// beginFrame appends a frame header whose length endFrame fills in.
func beginFrame(b []byte, o op, flags uint8, code uint16, id uint32) ([]byte, int) {
	start := len(b)
	b = append(b, byte(o), flags, byte(code>>8), byte(code), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[start+4:], id)
	return b, start
}

// endFrame sets the length of the frame begun at start.
func endFrame(b []byte, start int) []byte {
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-headerLen))
	return b
}

// appendEmpty appends a frame without a payload: Stats, Ping, Cancel, Pong,
// or the OK that tells nothing more than success.
func appendEmpty(b []byte, o op, id uint32) []byte {
	b, start := beginFrame(b, o, 0, 0, id)
	return endFrame(b, start)
}

// helloMsg is a Hello: the magic, then these.
type helloMsg struct {
	version byte
	token   string
}

func appendHello(b []byte, m helloMsg) []byte {
	b, start := beginFrame(b, opHello, 0, 0, 0)
	b = append(appendString(b, magic), m.version)
	return endFrame(appendString(b, m.token), start)
}

// decodeHello fails on a bad magic too: the peer is no lmx client.
func decodeHello(p []byte) (helloMsg, error) {
	d := decoder{b: p}
	if string(d.bytes()) != magic {
		d.fail()
	}
	m := helloMsg{version: d.byte(), token: d.string()}
	return m, d.done()
}

// lockMsg is a Lock: its flags are the frame's.
type lockMsg struct {
	key   string
	flags uint8
	req   request
}

func appendLock(b []byte, id uint32, key string, r *request, wait bool) []byte {
	b, start := beginFrame(b, opLock, lockFlags(r, wait), 0, id)
	b = appendString(b, key)
	b = binary.AppendUvarint(b, uint64(r.ttl))
	b = binary.AppendUvarint(b, uint64(r.limit))
	b = binary.AppendVarint(b, int64(r.priority))
	b = appendString(b, r.owner)
	if r.preempt >= 0 {
		b = binary.AppendUvarint(b, uint64(r.preempt))
	}
	if r.lockDelay >= 0 {
		b = binary.AppendUvarint(b, uint64(r.lockDelay))
	}
	if r.keepAlive > 0 {
		b = binary.AppendUvarint(b, uint64(r.keepAlive))
	}
	return endFrame(b, start)
}

func lockFlags(r *request, wait bool) uint8 {
	var f uint8
	if wait {
		f |= flagWait
	}
	if r.shared {
		f |= flagShared
	}
	if r.keepOnDisconnect {
		f |= flagKeepOnDisconnect
	}
	if r.noPreempt {
		f |= flagNoPreempt
	}
	if r.preempt >= 0 {
		f |= flagPreempt
	}
	if r.lockDelay >= 0 {
		f |= flagLockDelay
	}
	if r.keepAlive > 0 {
		f |= flagKeepAlive
	}
	return f
}

func decodeLock(flags uint8, p []byte) (lockMsg, error) {
	d := decoder{b: p}
	m := lockMsg{key: d.string(), flags: flags}
	m.req.ttl = d.duration()
	limit := d.uvarint()
	m.req.priority = int(d.varint())
	m.req.owner = d.string()
	m.req.preempt, m.req.lockDelay = -1, -1
	if flags&flagPreempt != 0 {
		m.req.preempt = d.duration()
	}
	if flags&flagLockDelay != 0 {
		m.req.lockDelay = d.duration()
	}
	if flags&flagKeepAlive != 0 {
		if m.req.keepAlive = d.duration(); m.req.keepAlive == 0 {
			d.fail() // the flag says there is a bound
		}
	}
	if err := d.done(); err != nil {
		return m, err
	}
	if limit > maxLimit {
		limit = 0 // refused by validation
	}
	m.req.limit = int(limit)
	m.req.shared = flags&flagShared != 0
	m.req.keepOnDisconnect = flags&flagKeepOnDisconnect != 0
	m.req.noPreempt = flags&flagNoPreempt != 0
	return m, nil
}

// leaseMsg names a lease: the payload of Release, Revoke and Ended.
type leaseMsg struct {
	key string
	id  ulid.ULID
}

// appendLeaseOp appends a Release (reqID, code 0), a Revoke (request id 0,
// code 0) or an Ended (request id 0, code the reason).
func appendLeaseOp(b []byte, o op, code uint16, reqID uint32, m leaseMsg) []byte {
	b, start := beginFrame(b, o, 0, code, reqID)
	b = appendString(b, m.key)
	return endFrame(append(b, m.id[:]...), start)
}

// decodeLeaseMsg returns the key as bytes of p, for the caller to make a
// string where it uses it: a Release's key that does not escape then costs
// no allocation.
func decodeLeaseMsg(p []byte) (key []byte, id ulid.ULID, err error) {
	d := decoder{b: p}
	key, id = d.bytes(), d.ulid()
	return key, id, d.done()
}

// appendRelease appends a Release frame of the lease of key with lock id id.
func appendRelease(b []byte, reqID uint32, key string, id ulid.ULID) []byte {
	return appendLeaseOp(b, opRelease, 0, reqID, leaseMsg{key: key, id: id})
}

// extendMsg is an Extend.
type extendMsg struct {
	key string
	id  ulid.ULID
	ttl time.Duration
}

func appendExtend(b []byte, reqID uint32, m extendMsg) []byte {
	b, start := beginFrame(b, opExtend, 0, 0, reqID)
	b = append(appendString(b, m.key), m.id[:]...)
	return endFrame(binary.AppendUvarint(b, uint64(m.ttl)), start)
}

func decodeExtend(p []byte) (extendMsg, error) {
	d := decoder{b: p}
	m := extendMsg{key: d.string(), id: d.ulid(), ttl: d.duration()}
	return m, d.done()
}

// appendKeyOp appends a request about one key or prefix: ForceUnlock,
// Inspect or Watch.
func appendKeyOp(b []byte, o op, reqID uint32, key string) []byte {
	b, start := beginFrame(b, o, 0, 0, reqID)
	return endFrame(appendString(b, key), start)
}

func decodeKey(p []byte) (string, error) {
	d := decoder{b: p}
	key := d.string()
	return key, d.done()
}

// listMsg is a List.
type listMsg struct {
	prefix string
	limit  uint64
}

func appendList(b []byte, reqID uint32, m listMsg) []byte {
	b, start := beginFrame(b, opList, 0, 0, reqID)
	b = appendString(b, m.prefix)
	return endFrame(binary.AppendUvarint(b, m.limit), start)
}

func decodeList(p []byte) (listMsg, error) {
	d := decoder{b: p}
	m := listMsg{prefix: d.string(), limit: d.uvarint()}
	return m, d.done()
}

// stopMsg is a Stop, and the Stopped that answers it.
type stopMsg struct {
	key string
	seq uint64
}

// appendStop appends a Stop (opStop) or a Stopped (opStopped).
func appendStop(b []byte, o op, m stopMsg) []byte {
	b, start := beginFrame(b, o, 0, 0, 0)
	b = appendString(b, m.key)
	return endFrame(binary.AppendUvarint(b, m.seq), start)
}

func decodeStop(p []byte) (stopMsg, error) {
	d := decoder{b: p}
	m := stopMsg{key: d.string(), seq: d.uvarint()}
	return m, d.done()
}

// welcomeMsg is a Welcome.
type welcomeMsg struct {
	version             byte
	session             ulid.ULID
	heartbeat, timeout  time.Duration
	maxFrame, maxKeyLen uint64
}

func appendWelcome(b []byte, m welcomeMsg) []byte {
	b, start := beginFrame(b, opWelcome, 0, 0, 0)
	b = append(append(b, m.version), m.session[:]...)
	b = binary.AppendUvarint(b, uint64(m.heartbeat))
	b = binary.AppendUvarint(b, uint64(m.timeout))
	b = binary.AppendUvarint(b, m.maxFrame)
	return endFrame(binary.AppendUvarint(b, m.maxKeyLen), start)
}

func decodeWelcome(p []byte) (welcomeMsg, error) {
	d := decoder{b: p}
	m := welcomeMsg{version: d.byte(), session: d.ulid(), heartbeat: d.duration(), timeout: d.duration(),
		maxFrame: d.uvarint(), maxKeyLen: d.uvarint()}
	return m, d.done()
}

// grantedMsg is a Granted.
type grantedMsg struct {
	id    ulid.ULID
	token uint64
	exp   time.Time
}

func appendGranted(b []byte, reqID uint32, m grantedMsg) []byte {
	b, start := beginFrame(b, opGranted, 0, 0, reqID)
	b = binary.AppendUvarint(append(b, m.id[:]...), m.token)
	return endFrame(appendTime(b, m.exp), start)
}

func decodeGranted(p []byte) (grantedMsg, error) {
	d := decoder{b: p}
	m := grantedMsg{id: d.ulid(), token: d.uvarint(), exp: d.time()}
	return m, d.done()
}

// appendExpiry appends the OK answering an Extend: the new expiry.
func appendExpiry(b []byte, reqID uint32, exp time.Time) []byte {
	b, start := beginFrame(b, opOK, 0, 0, reqID)
	return endFrame(appendTime(b, exp), start)
}

func decodeExpiry(p []byte) (time.Time, error) {
	d := decoder{b: p}
	exp := d.time()
	if err := d.done(); err != nil {
		return time.Time{}, fmt.Errorf("%w: extend: %v", ErrProtocol, err)
	}
	return exp, nil
}

// appendError appends an Error frame: err's code and message.
func appendError(b []byte, reqID uint32, code uint16, msg string) []byte {
	b, start := beginFrame(b, opError, 0, code, reqID)
	return endFrame(appendString(b, msg), start)
}

func decodeErrorMsg(p []byte) (string, error) {
	d := decoder{b: p}
	msg := d.string()
	return msg, d.done()
}

// decodeError returns the error an Error frame carries, matching its
// sentinel; a message that does not decode is only lost.
func decodeError(code uint16, p []byte) error {
	msg, _ := decodeErrorMsg(p)
	return codeError(code, msg)
}

func appendInfo(b []byte, reqID uint32, ki *KeyInfo) []byte {
	b, start := beginFrame(b, opInfo, 0, 0, reqID)
	b = binary.AppendUvarint(b, uint64(ki.Limit))
	holders, waiters := ki.Holders, ki.Waiters
	holders = holders[:min(len(holders), maxListed)]
	waiters = waiters[:min(len(waiters), maxListed)]
	b = binary.AppendUvarint(b, uint64(len(holders)))
	for _, h := range holders {
		b = append(b, h.ID[:]...)
		b = binary.AppendUvarint(b, h.Token)
		b = appendString(b, h.Owner)
		b = append(b, boolByte(h.Shared))
		b = binary.AppendUvarint(b, uint64(h.Count))
		b = appendTime(b, h.Expires)
		b = appendTime(b, h.Since)
	}
	b = binary.AppendUvarint(b, uint64(len(waiters)))
	for _, w := range waiters {
		b = appendString(b, w.Owner)
		b = binary.AppendVarint(b, int64(w.Priority))
		b = append(b, boolByte(w.Shared))
	}
	return endFrame(b, start)
}

// maxListed bounds the holders and the waiters an Info frame lists, so that
// it stays far below the frame limit.
const maxListed = 4096

func decodeInfo(key string, p []byte) (KeyInfo, error) {
	d := decoder{b: p}
	ki := KeyInfo{Key: key, Limit: int(d.uvarint())}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		var h HolderInfo
		h.ID = d.ulid()
		h.Token = d.uvarint()
		h.Owner = d.string()
		h.Shared = d.byte() != 0
		h.Count = int(d.uvarint())
		h.Expires = d.time()
		h.Since = d.time()
		ki.Holders = append(ki.Holders, h)
	}
	for n := d.uvarint(); n > 0 && d.err == nil; n-- {
		var w WaiterInfo
		w.Owner = d.string()
		w.Priority = int(d.varint())
		w.Shared = d.byte() != 0
		ki.Waiters = append(ki.Waiters, w)
	}
	return ki, d.done()
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func appendStatsOK(b []byte, reqID uint32, s *Stats) []byte {
	b, start := beginFrame(b, opStatsOK, 0, 0, reqID)
	for _, v := range []uint64{uint64(s.Keys), uint64(s.Holders), uint64(s.Waiters), uint64(s.Sessions),
		s.Grants, s.Expiries, s.Forced, s.Preemptions, s.SessionLost} {
		b = binary.AppendUvarint(b, v)
	}
	for _, h := range []*Histogram{&s.WaitTime, &s.HoldTime} {
		for _, c := range h.Counts {
			b = binary.AppendUvarint(b, c)
		}
		b = binary.AppendUvarint(b, uint64(h.Sum))
	}
	return endFrame(b, start)
}

func decodeStatsOK(p []byte) (Stats, error) {
	d := decoder{b: p}
	s := Stats{
		Keys: int(d.uvarint()), Holders: int(d.uvarint()), Waiters: int(d.uvarint()), Sessions: int(d.uvarint()),
		Grants: d.uvarint(), Expiries: d.uvarint(), Forced: d.uvarint(), Preemptions: d.uvarint(), SessionLost: d.uvarint(),
	}
	for _, h := range []*Histogram{&s.WaitTime, &s.HoldTime} {
		for i := range h.Counts {
			h.Counts[i] = d.uvarint()
		}
		h.Sum = d.duration()
	}
	return s, d.done()
}

// appendEvent appends an Event frame answering the Watch reqID; the event's
// type is the frame's code.
func appendEvent(b []byte, reqID uint32, ev *Event) []byte {
	b, start := beginFrame(b, opEvent, 0, uint16(ev.Type), reqID)
	b = appendString(b, ev.Key)
	b = append(b, ev.ID[:]...)
	b = binary.AppendUvarint(b, ev.Token)
	b = appendString(b, ev.Owner)
	b = appendTime(b, ev.Time)
	return endFrame(binary.AppendUvarint(b, ev.Missed), start)
}

func decodeEvent(code uint16, p []byte) (Event, error) {
	d := decoder{b: p}
	ev := Event{Type: EventType(code), Key: d.string(), ID: d.ulid(), Token: d.uvarint(), Owner: d.string(), Time: d.time(), Missed: d.uvarint()}
	if ev.Type == 0 || ev.Type > EventLagged {
		d.fail()
	}
	return ev, d.done()
}

func appendKeys(b []byte, reqID uint32, keys []KeyStat) []byte {
	b, start := beginFrame(b, opKeys, 0, 0, reqID)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k.Key)
		b = binary.AppendUvarint(b, uint64(k.Limit))
		b = binary.AppendUvarint(b, uint64(k.Holders))
		b = binary.AppendUvarint(b, uint64(k.Waiters))
	}
	return endFrame(b, start)
}

func decodeKeys(p []byte) ([]KeyStat, error) {
	d := decoder{b: p}
	n := d.uvarint()
	if n > MaxListLimit {
		d.fail()
	}
	var keys []KeyStat
	for ; n > 0 && d.err == nil; n-- {
		keys = append(keys, KeyStat{Key: d.string(), Limit: int(d.uvarint()), Holders: int(d.uvarint()), Waiters: int(d.uvarint())})
	}
	return keys, d.done()
}

// nextMsg is a Next: the queued Lock it answers follows the lease pred,
// and will be granted with id and token.
type nextMsg struct {
	pred, id ulid.ULID
	token    uint64
}

func appendNext(b []byte, reqID uint32, m nextMsg) []byte {
	b, start := beginFrame(b, opNext, 0, 0, reqID)
	b = append(append(b, m.pred[:]...), m.id[:]...)
	return endFrame(binary.AppendUvarint(b, m.token), start)
}

func decodeNext(p []byte) (nextMsg, error) {
	d := decoder{b: p}
	m := nextMsg{pred: d.ulid(), id: d.ulid(), token: d.uvarint()}
	return m, d.done()
}
