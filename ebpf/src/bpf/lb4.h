/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * IPv4 service load-balancing maps and lookups shared by Berth's programs.
 *
 * Layout (after Cilium's lb4 maps, with arrays where the index is ours):
 *   lb4_services: (vip, port, proto) -> lb4_service, the frontend's
 *       master entry: `count` backend slots from `slot_base` on
 *   lb4_slots: slot index -> backend id (each frontend owns a range of
 *       `capacity` slots from `slot_base`)
 *   lb4_backends: backend id -> lb4_backend (address, port); id 0 and
 *       all-zero entries mean no backend
 *   lb4_reverse_sk: (socket cookie, backend) -> frontend, for replies
 *   lb4_affinity: (client netns cookie, frontend) -> backend, for
 *       sessionAffinity ClientIP
 *
 * Writers fill backends, then slots, then the master entry, so a program
 * that sees a master entry always finds its slots. A frontend whose
 * backends outgrow its range gets a new one: slots are written there
 * first and the master entry switches to it in one update; the old range
 * is reused only by a later write.
 *
 * Every struct is shared with Rust (generated skeleton types): fields in
 * network order are typed __be*, padding is explicit.
 */
/*
 * The services map is a preallocated hash (no allocation per insert);
 * slots and backends are arrays, whose updates cost a third of a hash
 * insert: 10 000 services of 10 backends program in a few tens of
 * milliseconds, for memory fixed by their configured sizes.
 */
#ifndef BERTH_LB4_H
#define BERTH_LB4_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

/* A service frontend. */
struct lb4_key {
	__be32 address;      /* virtual IPv4 address */
	__be16 dport;        /* virtual port */
	__u8 proto;          /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* Master entry flags. */
#define LB4_SVC_AFFINITY 0x1 /* sessionAffinity: ClientIP */
#define LB4_SVC_MAGLEV   0x2 /* flows hashed onto lb4_maglev (tc path) */

/* A frontend's master entry. */
struct lb4_service {
	__u32 slot_base;        /* lb4_slots index of its first slot */
	__u32 affinity_timeout; /* seconds, with LB4_SVC_AFFINITY */
	__u16 count;            /* backend slots in use */
	__u16 capacity;         /* slots reserved from slot_base (>= count) */
	__u16 flags;            /* LB4_SVC_* */
	__u16 pad;
};

/* One backend slot of a frontend. */
struct lb4_slot {
	__u32 backend_id;    /* index into lb4_backends */
};

/* A real endpoint a frontend translates to; all zero: none. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb4_slot);
	__uint(max_entries, 262144);
} lb4_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
} lb4_backends SEC(".maps");

/*
 * Maglev lookup table of a frontend (key: its lb4_services key): entry
 * i holds the backend id for flows hashing to i. The agent computes it
 * from the backends' addresses alone, so every node holds the same table
 * and sends a given flow to the same backend.
 */
#define LB4_MAGLEV_SIZE 1021

struct lb4_maglev {
	__u32 backend_ids[LB4_MAGLEV_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_maglev);
	__uint(max_entries, 1024);
} lb4_maglev SEC(".maps");

/*
 * Reverse translation for sockets: (socket cookie, backend address, port)
 * -> the frontend the socket asked for. recvmsg() and getpeername() then
 * show the frontend, not the backend, as the peer (UDP clients such as DNS
 * resolvers drop answers from an address they did not ask).
 */
struct lb4_reverse_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_reverse {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_reverse_key);
	__type(value, struct lb4_reverse);
	__uint(max_entries, 262144);
} lb4_reverse_sk SEC(".maps");

/*
 * Session affinity: (client, frontend) -> the backend it was given and
 * when it last used it. At the socket layer the client is its network
 * namespace (a pod: all its processes share one), named by its cookie.
 */
struct lb4_affinity_key {
	__u64 client;        /* network namespace cookie */
	__be32 address;
	__be16 dport;
	__u8 proto;
	__u8 pad;
};

struct lb4_affinity {
	__u64 last_used_ns;  /* bpf_ktime_get_ns() of the last connect */
	__u32 backend_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity);
	__uint(max_entries, 65536);
} lb4_affinity SEC(".maps");

/* The master entry of the service at (address, port, proto), or NULL. */
static __always_inline struct lb4_service *
lb4_lookup_service(__be32 address, __be16 port, __u8 proto)
{
	struct lb4_key key = {
		.address = address,
		.dport = port,
		.proto = proto,
	};

	return bpf_map_lookup_elem(&lb4_services, &key);
}

/* The backend with id `id`, or NULL when that id holds none. */
static __always_inline struct lb4_backend *lb4_backend_by_id(__u32 id)
{
	struct lb4_backend *backend = bpf_map_lookup_elem(&lb4_backends, &id);

	if (!backend || backend->proto == 0)
		return NULL;
	return backend;
}

/*
 * Pick a backend of `svc` (a master entry) at random among its slots; its
 * id goes to *id. NULL when the slot or backend is missing.
 */
static __always_inline struct lb4_backend *
lb4_select_backend(const struct lb4_service *svc, __u32 *id)
{
	struct lb4_slot *slot;
	__u32 index;

	if (svc->count == 0)
		return NULL;
	index = svc->slot_base + bpf_get_prandom_u32() % svc->count;
	slot = bpf_map_lookup_elem(&lb4_slots, &index);
	if (!slot)
		return NULL;
	*id = slot->backend_id;
	return lb4_backend_by_id(slot->backend_id);
}

/*
 * The backend of a Maglev frontend for a flow hashing to `hash`; its id
 * goes to *id. NULL when the table or backend is missing.
 */
static __always_inline struct lb4_backend *
lb4_maglev_backend(__be32 address, __be16 port, __u8 proto, __u32 hash, __u32 *id)
{
	struct lb4_key key = {
		.address = address,
		.dport = port,
		.proto = proto,
	};
	struct lb4_maglev *table;
	__u32 i = hash % LB4_MAGLEV_SIZE;

	table = bpf_map_lookup_elem(&lb4_maglev, &key);
	/* The verifier does not bound a remainder: keep clang from dropping
	 * the (always true) check that gives it the bound. */
	asm volatile("" : "+r"(i));
	if (!table || i >= LB4_MAGLEV_SIZE)
		return NULL;
	*id = table->backend_ids[i];
	return lb4_backend_by_id(*id);
}

/*
 * The backend `client` was given for this frontend, while its affinity
 * (svc->affinity_timeout seconds since the last use) holds and the backend
 * still exists; NULL otherwise. The agent removes entries pointing at
 * backends a service no longer has.
 */
static __always_inline struct lb4_backend *
lb4_affinity_backend(const struct lb4_service *svc,
		     const struct lb4_affinity_key *key, __u64 now)
{
	struct lb4_affinity *entry;

	entry = bpf_map_lookup_elem(&lb4_affinity, key);
	if (!entry)
		return NULL;
	if (now - entry->last_used_ns > (__u64)svc->affinity_timeout * 1000000000ULL)
		return NULL;
	entry->last_used_ns = now;
	return lb4_backend_by_id(entry->backend_id);
}

/* Remember that `client` was given backend `id`. */
static __always_inline void
lb4_affinity_update(const struct lb4_affinity_key *key, __u32 id, __u64 now)
{
	struct lb4_affinity entry = {
		.last_used_ns = now,
		.backend_id = id,
	};

	bpf_map_update_elem(&lb4_affinity, key, &entry, BPF_ANY);
}

#endif /* BERTH_LB4_H */
