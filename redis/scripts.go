package redis

import (
	"strconv"
	"strings"

	"github.com/lmx-go/lmx"
	goredis "github.com/redis/go-redis/v9"
)

// The state of one lock key K under the prefix P lives in three Redis keys,
// which every script gets as KEYS[1..3]:
//
//	P q: K   list    the waiters, in queue order; each one a waiter record
//	P h: K   hash    the holders: lock id -> holder record
//	P m: K   hash    "limit" -> the key's Limit; "b:" id -> how often the
//	                 waiter id was overtaken by a higher priority; "c:" id
//	                 -> how often the owner of holder id re-entered it
//	                 (Owner, counted by its Locker); "q:" id -> when the
//	                 waiter id queued, for the WaitTime histogram; "P"
//	                 once a waiter asked with Preempt queued. It exists
//	                 while the key has a holder or a waiter: Stats finds the
//	                 live keys by it.
//
// and, shared by all keys of the prefix,
//
//	P t          string  the fencing-token counter (INCR)
//	P n          hash    what happened: g(rants), x (expiries), f(orced),
//	                     p(reempted), s(ession lost); "w" i and "h" i
//	                     the counts of lmx.Stats's WaitTime and HoldTime
//	                     histograms, bucket i, "ws" and "hs" their sums
//	                     in ms
//	P s: SID     string  a session, kept alive by its Locker (PEXPIRE)
//	P d: K       string  while it lives (PX), K's lock-delay: nothing is
//	                     granted
//	P c: LID     channel a Locker's messages: "g|id|token|ttl|K" (granted),
//	                     "e|id|why" (ended: x expired, s session lost,
//	                     f forced, r released, p preempted), "v|id"
//	                     (revoked: make way for a preemptor), "l|id"
//	                     (look again: a preemption round started for the
//	                     waiter id, whose deadline it keeps)
//	P e          channel the events, for Watch: "what|id|token|ms|key",
//	                     what a (acquired), r (released), x, s, f, p as
//	                     above
//
// A waiter record is
// id|sid|locker|mode|ttl|kod|priority|delay|grace|np|owner, a holder record
// token|sid|locker|mode|expires|since|delay|priority|np|preempt|owner (delay
// its LockDelay in ms, 0 for none; grace its Preempt in ms, -1 for none; np
// "1" for NoPreempt; expires, since and preempt in Redis-time milliseconds,
// expires 0 for none, preempt the deadline of a preemption round, 0 for
// none; sid "" for a lease that outlives its session). The owner comes
// last, so that it may hold "|".
//
// Preemption is the broker's: a queue's head asked with Preempt that does
// not fit sets a deadline, its grace from now, in the holders it needs
// gone (if none of them is NoPreempt or of its priority or higher), and
// their Lockers are told to revoke them. A holder whose deadline passes is
// reaped like an expired one (why "p"), by the head's own Locker, which
// looks again then. The deadlines are cleared when the head leaves the
// queue, granted or not.
//
// Every script first reaps the key's dead holders (expired, preempted, or
// whose session key is gone) and then grants the queue's head while it
// fits: so whoever next touches a key frees it from the dead and hands it
// on. The scripts touch keys they are not given (sessions, the counter):
// they need a single Redis, not a cluster.

// lib is the Lua every script starts with. ARGV[1] is the prefix, ARGV[2]
// the lock key, ARGV[3] the lock id of the caller's own request ("" for
// none): a grant of it is returned, not published.
var lib = `
local P, K, self = ARGV[1], ARGV[2], ARGV[3]
local bounds = {` + boundsMS() + `}
local q, h, m = KEYS[1], KEYS[2], KEYS[3]
local maxBypass = 64
local function d(n) return string.format('%d', n) end
local t = redis.call('TIME')
t = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function waiter(r)
	local id, sid, lid, mode, ttl, kod, prio, delay, grace, np, owner = string.match(r,
		'^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
	return {id = id, sid = sid, lid = lid, mode = mode, ttl = tonumber(ttl), kod = kod,
		prio = tonumber(prio), delay = delay, grace = tonumber(grace), np = np, owner = owner, rec = r}
end
local function holder(id, r)
	local tok, sid, lid, mode, exp, since, delay, prio, np, pdl, owner = string.match(r,
		'^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
	return {id = id, tok = tok, sid = sid, lid = lid, mode = mode, exp = tonumber(exp),
		since = since, delay = delay, prio = tonumber(prio), np = np, pdl = tonumber(pdl), owner = owner}
end
-- hrec is the holder record of x.
local function hrec(x)
	return x.tok .. '|' .. x.sid .. '|' .. x.lid .. '|' .. x.mode .. '|' .. d(x.exp) .. '|' .. x.since .. '|' ..
		x.delay .. '|' .. d(x.prio) .. '|' .. x.np .. '|' .. d(x.pdl) .. '|' .. x.owner
end
local lives = {}
local function alive(sid)
	if sid == '' then return true end
	local a = lives[sid]
	if a == nil then
		a = redis.call('EXISTS', P .. 's:' .. sid) == 1
		lives[sid] = a
	end
	return a
end
local function tell(lid, msg)
	redis.call('PUBLISH', P .. 'c:' .. lid, msg)
end
local function count(what)
	redis.call('HINCRBY', P .. 'n', what, 1)
end
-- observe counts ms in the histogram hist ('w' or 'h').
local function observe(hist, ms)
	local i = 0
	while i < #bounds and ms > bounds[i + 1] do i = i + 1 end
	redis.call('HINCRBY', P .. 'n', hist .. i, 1)
	redis.call('HINCRBY', P .. 'n', hist .. 's', ms)
end
local function event(what, id, tok)
	redis.call('PUBLISH', P .. 'e', what .. '|' .. id .. '|' .. tok .. '|' .. d(t) .. '|' .. K)
end
-- why returns why the holder x has ended, or nil while it holds.
local function why(x)
	if x.exp > 0 and x.exp <= t then return 'x' end
	if not alive(x.sid) then return 's' end
	if x.pdl > 0 and x.pdl <= t then return 'p' end
	return nil
end
-- H are the live holders by id once reap has run, ex and sh how many hold
-- exclusive and shared.
local H, ex, sh = {}, 0, 0
local function add(x)
	H[x.id] = x
	if x.mode == 's' then sh = sh + 1 else ex = ex + 1 end
end
-- unhold removes the holder x from Redis.
local function unhold(x)
	redis.call('HDEL', h, x.id)
	observe('h', t - tonumber(x.since))
	if x.owner ~= '' then redis.call('HDEL', m, 'c:' .. x.id) end
end
local function drop(id)
	local x = H[id]
	if x then
		H[id] = nil
		if x.mode == 's' then sh = sh - 1 else ex = ex - 1 end
		unhold(x)
	end
	return x
end
-- delayed tells whether the key's lock-delay runs; hush starts the
-- lock-delay of the holder x, which ended without its holder asking.
local dk, dl = P .. 'd:' .. K, nil
local function delayed()
	if dl == nil then dl = redis.call('PTTL', dk) end
	return dl > 0
end
local function hush(x)
	local ms = tonumber(x.delay)
	if ms > 0 and not (delayed() and dl >= ms) then
		redis.call('SET', dk, '1', 'PX', ms)
		dl = ms
	end
end
-- reap ends the dead holders and tells their Lockers; it returns how many
-- it ended, and gone has why each one ended.
local gone = {}
local function reap()
	local all, n = redis.call('HGETALL', h), 0
	for i = 1, #all, 2 do
		local x = holder(all[i], all[i + 1])
		local w = why(x)
		if w then
			unhold(x)
			if w ~= 'p' then hush(x) end
			tell(x.lid, 'e|' .. x.id .. '|' .. w)
			count(w)
			event(w, x.id, x.tok)
			gone[x.id] = w
			n = n + 1
		else
			add(x)
		end
	end
	return n
end
-- lim is the key's limit, pre whether a waiter asked with Preempt has
-- queued since the key was last idle (nil: not read yet).
local lim, pre = nil, nil
local function limit()
	if not lim then
		local v = redis.call('HMGET', m, 'limit', 'P')
		lim, pre = tonumber(v[1] or '1'), v[2] ~= false
	end
	return lim
end
local function fits(mode)
	if mode == 's' then return ex == 0 end
	return sh == 0 and ex < limit()
end
local function token()
	local v = redis.call('INCR', P .. 't')
	if v == 1 then
		-- A new counter (a new Redis, or one that lost its data) starts
		-- at the time in microseconds, so that tokens keep increasing.
		local tm = redis.call('TIME')
		v = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
		redis.call('SET', P .. 't', d(v))
	end
	return v
end
-- hold makes the request w a holder and tells its Locker, unless it is the
-- caller's own.
local function hold(w)
	local tok = d(token())
	local exp = 0
	if w.ttl > 0 then exp = t + w.ttl end
	local sid = w.sid
	if w.kod == '1' then sid = '' end
	local x = {id = w.id, tok = tok, sid = sid, lid = w.lid, mode = w.mode, exp = exp, since = d(t),
		delay = w.delay, prio = w.prio, np = w.np, pdl = 0, owner = w.owner}
	redis.call('HSET', h, w.id, hrec(x))
	add(x)
	count('g')
	event('a', w.id, tok)
	if w.id ~= self then tell(w.lid, 'g|' .. w.id .. '|' .. tok .. '|' .. d(w.ttl) .. '|' .. K) end
end
-- preempt starts a round of preemption for the queue's head w, which does
-- not fit, if it asked for one: the holders in its way, fewest and lowest
-- in priority first (among equals, the newest), get a deadline, unless one
-- of them may not be preempted. Those that have one keep it. A round that
-- starts tells w's Locker to look again, unless w is the caller's own.
local function preempt(w)
	if w.grace < 0 then return end
	local shv, exv = {}, {}
	for _, x in pairs(H) do
		if x.mode == 's' then table.insert(shv, x) else table.insert(exv, x) end
	end
	local need = exv
	if w.mode ~= 's' then
		need = shv
		local excess = #exv - limit() + 1
		if excess > 0 then
			table.sort(exv, function(a, b)
				if a.prio ~= b.prio then return a.prio < b.prio end
				return tonumber(a.tok) > tonumber(b.tok)
			end)
			for i = 1, excess do table.insert(need, exv[i]) end
		end
	end
	for _, x in ipairs(need) do
		if x.np == '1' or x.prio >= w.prio then return end
	end
	local started = false
	for _, x in ipairs(need) do
		if x.pdl == 0 then
			x.pdl = t + w.grace
			redis.call('HSET', h, x.id, hrec(x))
			tell(x.lid, 'v|' .. x.id)
			started = true
		end
	end
	if started and w.id ~= self then tell(w.lid, 'l|' .. w.id) end
end
-- unpreempt ends the round of preemption of a head that left the queue.
local function unpreempt()
	for id, x in pairs(H) do
		if x.pdl > 0 then
			x.pdl = 0
			redis.call('HSET', h, id, hrec(x))
		end
	end
end
-- grant grants the queue's head while it fits, dropping dead waiters;
-- qempty tells that it left the queue empty (nothing queues after it).
-- While the exclusive holders fill the limit nothing fits: it need not
-- look, unless a preemptor may be queued. A head that does not fit may
-- preempt the holders (see preempt).
-- A record of a request that holds, was reaped, or is the one the script
-- ends (done) is a stale copy, which a retried script may have queued: it
-- is dropped, never granted again.
local qempty = false
local done = {}
local function grant()
	while true do
		if ex > 0 and ex >= limit() then
			if pre == nil then pre = redis.call('HEXISTS', m, 'P') == 1 end
			if not pre then return end
		end
		local r = redis.call('LINDEX', q, 0)
		if not r then
			qempty = true
			return
		end
		local w = waiter(r)
		local live = alive(w.sid) and not H[w.id] and not gone[w.id] and not done[w.id]
		if live and not fits(w.mode) then
			preempt(w)
			return
		end
		if live and delayed() then return end
		redis.call('LPOP', q)
		local qt = redis.call('HGET', m, 'q:' .. w.id)
		redis.call('HDEL', m, 'b:' .. w.id, 'q:' .. w.id)
		if w.grace >= 0 then unpreempt() end
		if live then
			hold(w)
			if qt then observe('w', t - tonumber(qt)) end
		end
	end
end
-- tidy forgets an idle key.
local function tidy()
	if next(H) == nil and (qempty or redis.call('EXISTS', q) == 0) then
		redis.call('DEL', m)
	end
end
-- wake returns in how many ms a holder may end on its own (its TTL or its
-- session's), -1 if none may: when a waiter looks again.
local function wake()
	local best = -1
	local function at(ms)
		if ms >= 0 and (best < 0 or ms < best) then best = ms end
	end
	for _, x in pairs(H) do
		if x.exp > 0 then at(x.exp - t) end
		if x.pdl > 0 then at(x.pdl - t) end
		if x.sid ~= '' then at(redis.call('PTTL', P .. 's:' .. x.sid)) end
	end
	if delayed() then at(dl) end
	return best
end
-- mine returns the reply for the caller's request, whose waiter record is
-- rec ('' if it is known not to wait): {'g', token, ms left (0: no TTL)}
-- when it holds, {'w', wake} while it waits, {'n'} when it is gone.
local function mine(rec)
	local x = H[self]
	if x then
		local left = 0
		if x.exp > 0 then left = x.exp - t end
		return {'g', x.tok, left}
	end
	if rec ~= '' and redis.call('LPOS', q, rec) then return {'w', wake()} end
	return {'n'}
end
`

// acquireScript queues a request and grants what fits. ARGV[4] is its
// waiter record, ARGV[5] its Limit, ARGV[6] "1" for a TryLock. It returns
// mine's reply, {'l'} when a TryLock found the key locked, {'m', limit}
// when the key lives with another Limit, or {'d'} when the request's
// session is dead.
var acquireScript = goredis.NewScript(lib + `
local rec, lim0, try = ARGV[4], ARGV[5], ARGV[6] == '1'
local me = waiter(rec)
if not alive(me.sid) then return {'d'} end
if reap() > 0 then grant() end
-- A request that holds or waits already (the script ran before, and the
-- client did not hear its reply) stays as it is.
if H[self] then return mine('') end
-- The limit is set while the key is live (tidy deletes it): a limit set
-- with the key idle is one the reap above has just made stale. A key with
-- holders has one: one HGET; a new key's is set with one HSETNX.
local have = nil
if next(H) ~= nil then have = redis.call('HGET', m, 'limit') end
if not have and redis.call('HSETNX', m, 'limit', lim0) == 0 then have = redis.call('HGET', m, 'limit') end
if have and have ~= lim0 then
	if next(H) ~= nil or redis.call('EXISTS', q) == 1 then return {'m', have} end
	redis.call('HSET', m, 'limit', lim0)
end
lim = tonumber(lim0)
-- The only preemptor this script may queue is its own request.
if me.grace >= 0 then redis.call('HSET', m, 'P', '1') end
pre = pre or me.grace >= 0
local tail = redis.call('LINDEX', q, -1)
if not tail then -- nobody waits: granted if it fits
	if fits(me.mode) and not delayed() then
		hold(me)
		return mine('')
	end
	if try then return {'l'} end
	redis.call('RPUSH', q, rec)
	redis.call('HSET', m, 'q:' .. self, d(t))
	preempt(me)
	return {'w', wake()}
end
if try then
	-- Granted now only if it fits and may overtake every waiter.
	local ok = fits(me.mode) and not delayed()
	local head = redis.call('LINDEX', q, 0)
	if ok and head then
		local w = waiter(head)
		ok = w.prio < me.prio and tonumber(redis.call('HGET', m, 'b:' .. w.id) or '0') < maxBypass
	end
	if not ok then return {'l'} end -- the key has waiters: it stays
	for _, r in ipairs(redis.call('LRANGE', q, 0, -1)) do
		redis.call('HINCRBY', m, 'b:' .. waiter(r).id, 1)
	end
	hold(me)
	return mine('')
end
if redis.call('LPOS', q, rec) then return {'w', wake()} end
-- Queue behind every waiter of its priority or higher, and behind any
-- overtaken maxBypass times; count a bypass for those it overtakes.
local at, head, r = 0, false, tail
while true do
	if at > 0 then r = redis.call('LINDEX', q, -1 - at) end
	if not r then
		head = true
		break
	end
	local w = waiter(r)
	if w.prio >= me.prio or tonumber(redis.call('HGET', m, 'b:' .. w.id) or '0') >= maxBypass then break end
	at = at + 1
end
if at == 0 then
	redis.call('RPUSH', q, rec)
else
	for _, r in ipairs(redis.call('LRANGE', q, -at, -1)) do
		redis.call('HINCRBY', m, 'b:' .. waiter(r).id, 1)
	end
	if head then
		redis.call('LPUSH', q, rec)
	else
		redis.call('LINSERT', q, 'BEFORE', redis.call('LINDEX', q, -at), rec)
	end
end
redis.call('HSET', m, 'q:' .. self, d(t))
grant()
if H[self] then return mine('') end
return {'w', wake()}
`)

// pokeScript reaps and grants, then reports on the caller's request, whose
// waiter record is ARGV[4]: what a waiter does when it looks again.
var pokeScript = goredis.NewScript(lib + `
reap()
grant()
tidy()
return mine(ARGV[4])
`)

// cancelScript takes back a request, waiter record ARGV[4]: out of the
// queue, or, if it was granted meanwhile, out of the holders, and hands the
// key on.
var cancelScript = goredis.NewScript(lib + `
done[self] = true
local head = ARGV[4] ~= '' and redis.call('LINDEX', q, 0) == ARGV[4]
redis.call('LREM', q, 0, ARGV[4])
redis.call('HDEL', m, 'b:' .. self, 'q:' .. self)
reap()
if head and waiter(ARGV[4]).grace >= 0 then unpreempt() end
local x = drop(self)
if x then event('r', self, x.tok) end
grant()
tidy()
return 1
`)

// releaseScript ends the lease self. ARGV[4] is why, told to its Locker:
// "" (its own Unlock: nobody is told), "r" (Release), "x" (its own
// Locker's TTL timer ran out: counted, not told). It returns 1 when it
// ended the lease, 0 when there was none, or the reason the lease had
// already ended with ('x' or 's': reaped now).
var releaseScript = goredis.NewScript(lib + `
done[self] = true
reap()
local x = drop(self)
local res = gone[self] or 0
if x then
	res = 1
	if ARGV[4] == 'r' then tell(x.lid, 'e|' .. self .. '|r') end
	if ARGV[4] == 'x' then
		hush(x)
		count('x')
		event('x', self, x.tok)
	else
		event('r', self, x.tok)
	end
end
grant()
tidy()
return res
`)

// extendScript makes the lease self expire ARGV[4] ms from now. It returns
// 1, or 0 when the lease is not held.
var extendScript = goredis.NewScript(lib + `
if reap() > 0 then grant() end
local x = H[self]
if not x then
	tidy()
	return 0
end
x.exp = t + tonumber(ARGV[4])
redis.call('HSET', h, self, hrec(x))
return 1
`)

// forceScript ends every lease of the key, telling their Lockers, and
// returns how many there were.
var forceScript = goredis.NewScript(lib + `
reap()
local n = 0
for id, x in pairs(H) do
	done[id] = true
	drop(id)
	hush(x)
	tell(x.lid, 'e|' .. id .. '|f')
	count('f')
	event('f', id, x.tok)
	n = n + 1
end
grant()
tidy()
return n
`)

// viewScript reaps and grants, then returns the key's limit, its holders
// (id, record pairs), its waiters, the Redis time and the re-entry counts
// (field, count pairs of the metadata hash).
var viewScript = goredis.NewScript(lib + `
reap()
grant()
tidy()
return {redis.call('HGET', m, 'limit') or '0', redis.call('HGETALL', h), redis.call('LRANGE', q, 0, -1), d(t),
	redis.call('HGETALL', m)}
`)

// countScript adds ARGV[4] to the re-entries of the holder self, and
// returns 1, or 0 when self holds nothing. It reaps nothing: a dead holder
// counted is dropped with its count by whoever reaps it.
var countScript = goredis.NewScript(`
local h, m, self = KEYS[2], KEYS[3], ARGV[3]
if redis.call('HEXISTS', h, self) == 0 then return 0 end
if redis.call('HINCRBY', m, 'c:' .. self, ARGV[4]) <= 0 then redis.call('HDEL', m, 'c:' .. self) end
return 1
`)

// boundsMS is lmx.HistogramBounds in milliseconds, as a Lua list.
func boundsMS() string {
	var b []string
	for _, d := range lmx.HistogramBounds() {
		b = append(b, strconv.FormatInt(d.Milliseconds(), 10))
	}
	return strings.Join(b, ", ")
}
