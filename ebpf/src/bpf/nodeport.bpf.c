/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Service frontends reached from outside the node (NodePort, externalIPs,
 * LoadBalancer IPs), at tc ingress:
 *
 * - berth_nodeport, on the node's underlay interface: a packet to a
 *   frontend is translated to a backend (DNAT) and given this node's
 *   pod-network address as its source, with a port chosen here (SNAT), so
 *   the backend, local or on another node, answers to this node over the
 *   pod network. Both directions are remembered in lb4_ct.
 * - berth_nodeport_reply, on the bridge and the VXLAN device: a reply to
 *   the SNAT address is translated back (source: the frontend, destination:
 *   the client) and sent out of the underlay interface.
 *
 * Translated packets leave through bpf_redirect(_neigh) after a FIB lookup
 * instead of the input path, which would drop a packet arriving from
 * outside with a local source address.
 *
 * A frontend with no backend refuses at once, as kube-proxy's REJECT
 * does: a TCP segment is answered with a reset, a UDP datagram with an
 * ICMP port unreachable (either way the client sees "connection
 * refused").
 */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include "lb4.h"

#define AF_INET 2
/* Free ports SNAT tries before it gives up on a new connection. */
#define NAT_PORT_TRIES 16

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader: this node's pod-network address (the bridge's). */
const volatile __be32 snat_address = 0;
/*
 * Set by the loader: the source ports SNAT draws from, outside the node's
 * ephemeral range. The node's own connections to pods start from the same
 * address, with ports the kernel picks from that range without knowing
 * lb4_ct: sharing it, a backend's answer to one could be taken for the
 * other's.
 */
const volatile __u16 nat_port_min = 0;
const volatile __u16 nat_port_span = 0;

/* One direction of a translated connection, as it arrives. */
struct lb4_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What a packet of that direction is rewritten to. */
struct lb4_ct {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 backend_id;   /* the backend chosen (both directions) */
	__u32 flags;        /* LB4_CT_REPLY for the reply direction */
	__u32 pad;
	__u64 created_ns;
};

#define LB4_CT_REPLY 0x1

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_ct_key);
	__type(value, struct lb4_ct);
	__uint(max_entries, 262144);
} lb4_ct SEC(".maps");

/* Offsets of what a translation rewrites, for the packet at hand. */
struct l4 {
	__u32 ip_off;       /* IPv4 header */
	__u32 l4_off;       /* TCP/UDP header */
	__u32 csum_off;     /* L4 checksum */
	__u8 proto;
	__u8 udp_no_csum;   /* UDP without a checksum: leave it so */
};

/* Parses an Ethernet + IPv4 + TCP/UDP packet into key; 0 on success. */
static __always_inline int parse(struct __sk_buff *skb, struct lb4_ct_key *key,
				 struct l4 *at)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 ihl;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff)) /* fragments: not translated */
		return -1;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -1;
	at->ip_off = sizeof(*eth);
	at->l4_off = sizeof(*eth) + ihl;
	at->proto = ip->protocol;
	key->saddr = ip->saddr;
	key->daddr = ip->daddr;
	key->proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = data + at->l4_off;

		if ((void *)(tcp + 1) > end)
			return -1;
		key->sport = tcp->source;
		key->dport = tcp->dest;
		at->csum_off = at->l4_off + 16;
		at->udp_no_csum = 0;
		return 0;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = data + at->l4_off;

		if ((void *)(udp + 1) > end)
			return -1;
		key->sport = udp->source;
		key->dport = udp->dest;
		at->csum_off = at->l4_off + 6;
		at->udp_no_csum = udp->check == 0;
		return 0;
	}
	return -1;
}

/* Rewrites addresses and ports from `from` to `to`, checksums included. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct l4 *at,
				   const struct lb4_ct_key *from,
				   const struct lb4_ct *to)
{
	__u32 ip_csum = at->ip_off + 10;
	__u32 l4_flags = at->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!at->udp_no_csum) {
		if (bpf_l4_csum_replace(skb, at->csum_off, from->saddr, to->saddr,
					l4_flags | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l4_csum_replace(skb, at->csum_off, from->daddr, to->daddr,
					l4_flags | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l4_csum_replace(skb, at->csum_off, from->sport, to->sport,
					l4_flags | 2) ||
		    bpf_l4_csum_replace(skb, at->csum_off, from->dport, to->dport,
					l4_flags | 2))
			return -1;
	}
	if (bpf_l3_csum_replace(skb, ip_csum, from->saddr, to->saddr, 4) ||
	    bpf_l3_csum_replace(skb, ip_csum, from->daddr, to->daddr, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, at->ip_off + 12, &to->saddr, 4, 0) ||
	    bpf_skb_store_bytes(skb, at->ip_off + 16, &to->daddr, 4, 0) ||
	    bpf_skb_store_bytes(skb, at->l4_off, &to->sport, 2, 0) ||
	    bpf_skb_store_bytes(skb, at->l4_off + 2, &to->dport, 2, 0))
		return -1;
	return 0;
}

/*
 * Sends the (rewritten) packet toward its new destination: straight out
 * of the device the FIB names, with the neighbour's MAC when known, else
 * through the neighbour subsystem.
 */
static __always_inline int forward(struct __sk_buff *skb, __be32 saddr, __be32 daddr)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = saddr,
		.ipv4_dst = daddr,
		.ifindex = skb->ingress_ifindex,
	};
	void *data, *end;
	struct ethhdr *eth;
	long rc;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = fib.ipv4_dst,
		};

		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}

/*
 * Sends a packet made from one that came in (its Ethernet header `eth`,
 * as it arrived) back to where it came from: MACs swapped, out of the
 * device it came in on.
 */
static __always_inline int bounce(struct __sk_buff *skb, const struct ethhdr *eth)
{
	struct ethhdr back = { .h_proto = eth->h_proto };

	__builtin_memcpy(back.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(back.h_source, eth->h_dest, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &back, sizeof(back), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Bytes of TCP options at most (doff 15). */
#define TCP_OPTIONS_MAX 40

/*
 * Turns a TCP segment without payload into the reset that refuses it
 * (RFC 9293: seq = its ack if it has one, else ack = its seq + SYN + FIN)
 * and sends it back out of the device it came in on. Checksums are
 * updated, not recomputed, so that a packet whose checksum is left to the
 * device (CHECKSUM_PARTIAL, from a veth) stays right as well.
 */
static __always_inline int refuse_tcp(struct __sk_buff *skb, const struct l4 *at)
{
	__u32 csum = at->csum_off;
	struct ethhdr eth;
	struct iphdr ip;
	struct tcphdr tcp;
	__u8 options[TCP_OPTIONS_MAX] = {};
	__u16 old_word, new_word, old_len, new_len, tcp_len, opt_len;
	__be32 seq = 0, ack = 0, client;
	__be16 port;
	__s64 removed;
	__u16 had_ack;

	if (at->ip_off != sizeof(eth) || at->l4_off != sizeof(eth) + sizeof(ip))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) ||
	    bpf_skb_load_bytes(skb, at->ip_off, &ip, sizeof(ip)) ||
	    bpf_skb_load_bytes(skb, at->l4_off, &tcp, sizeof(tcp)))
		return TC_ACT_SHOT;
	tcp_len = bpf_ntohs(ip.tot_len) - sizeof(ip);
	opt_len = tcp.doff * 4 - sizeof(tcp);
	if (tcp.rst || tcp.doff < 5 || tcp_len != tcp.doff * 4)
		return TC_ACT_SHOT; /* never answer a reset; no payload */
	if (opt_len > TCP_OPTIONS_MAX)
		return TC_ACT_SHOT;
	if (opt_len && bpf_skb_load_bytes(skb, at->l4_off + sizeof(tcp), options,
					  opt_len))
		return TC_ACT_SHOT;

	/* The options go: take their bytes out of the checksum. */
	removed = bpf_csum_diff((__be32 *)options, TCP_OPTIONS_MAX, NULL, 0, 0);
	if (removed < 0 || bpf_l4_csum_replace(skb, csum, 0, removed, 0))
		return TC_ACT_SHOT;
	old_len = bpf_htons(tcp_len);
	new_len = bpf_htons(sizeof(tcp));
	if (bpf_l4_csum_replace(skb, csum, old_len, new_len, BPF_F_PSEUDO_HDR | 2))
		return TC_ACT_SHOT;
	had_ack = tcp.ack;
	if (had_ack)
		seq = tcp.ack_seq;
	else
		ack = bpf_htonl(bpf_ntohl(tcp.seq) + tcp.syn + tcp.fin);
	/* Word 12 of the header: data offset and flags. */
	old_word = *((__u16 *)&tcp + 6);
	__builtin_memset((__u8 *)&tcp + 12, 0, 2);
	tcp.doff = 5;
	tcp.rst = 1;
	tcp.ack = !had_ack;
	new_word = *((__u16 *)&tcp + 6);
	if (bpf_l4_csum_replace(skb, csum, tcp.seq, seq, 4) ||
	    bpf_l4_csum_replace(skb, csum, tcp.ack_seq, ack, 4) ||
	    bpf_l4_csum_replace(skb, csum, old_word, new_word, 2) ||
	    bpf_l4_csum_replace(skb, csum, tcp.window, 0, 2) ||
	    bpf_l4_csum_replace(skb, csum, tcp.urg_ptr, 0, 2))
		return TC_ACT_SHOT;
	old_len = ip.tot_len;
	new_len = bpf_htons(sizeof(ip) + sizeof(tcp));
	if (bpf_l3_csum_replace(skb, at->ip_off + 10, old_len, new_len, 2))
		return TC_ACT_SHOT;
	/* Addresses and ports swap: the checksums' sums do not change. */
	ip.tot_len = new_len;
	client = ip.saddr;
	ip.saddr = ip.daddr;
	ip.daddr = client;
	port = tcp.source;
	tcp.source = tcp.dest;
	tcp.dest = port;
	tcp.seq = seq;
	tcp.ack_seq = ack;
	tcp.window = 0;
	tcp.urg_ptr = 0;
	/* Everything but the checksums, updated in the packet above. */
	if (bpf_skb_store_bytes(skb, at->ip_off, &ip, offsetof(struct iphdr, check), 0) ||
	    bpf_skb_store_bytes(skb, at->ip_off + offsetof(struct iphdr, saddr), &ip.saddr,
				2 * sizeof(ip.saddr), 0) ||
	    bpf_skb_store_bytes(skb, at->l4_off, &tcp, offsetof(struct tcphdr, check), 0) ||
	    bpf_skb_store_bytes(skb, at->l4_off + offsetof(struct tcphdr, urg_ptr), &tcp.urg_ptr,
				sizeof(tcp.urg_ptr), 0))
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, sizeof(eth) + sizeof(ip) + sizeof(tcp), 0))
		return TC_ACT_SHOT;
	return bounce(skb, &eth);
}

/* One's complement sum of `len` bytes (a multiple of 4), folded. */
static __always_inline __sum16 csum_of(void *bytes, __u32 len)
{
	__s64 sum = bpf_csum_diff(NULL, 0, bytes, len, 0);
	__u32 folded = sum < 0 ? 0 : (__u32)sum;

	folded = (folded & 0xffff) + (folded >> 16);
	folded = (folded & 0xffff) + (folded >> 16);
	return (__sum16)~folded;
}

/* An ICMP destination unreachable header (<linux/icmp.h> needs libc). */
struct icmp_unreach {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__u32 unused;
};

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

/* An ICMP port unreachable: header, then the datagram's IP header and
 * first 8 bytes (RFC 792). */
struct unreachable {
	struct iphdr ip;
	struct icmp_unreach icmp;
	struct iphdr orig_ip;
	__u8 orig_l4[8];
};

/*
 * Turns a UDP datagram into the ICMP port unreachable that refuses it and
 * sends that back out of the device it came in on. (A packet whose
 * checksum was left to the device keeps that state; the devices in its
 * way then pass it as checked, as veths do.)
 */
static __always_inline int refuse_udp(struct __sk_buff *skb, const struct l4 *at)
{
	struct ethhdr eth;
	struct unreachable reply = {};

	if (at->ip_off != sizeof(eth) || at->l4_off != sizeof(eth) + sizeof(struct iphdr))
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) ||
	    bpf_skb_load_bytes(skb, at->ip_off, &reply.orig_ip, sizeof(reply.orig_ip)) ||
	    bpf_skb_load_bytes(skb, at->l4_off, reply.orig_l4, sizeof(reply.orig_l4)))
		return TC_ACT_SHOT;
	reply.icmp.type = ICMP_DEST_UNREACH;
	reply.icmp.code = ICMP_PORT_UNREACH;
	reply.icmp.checksum = csum_of(&reply.icmp,
				      sizeof(reply) - sizeof(reply.ip));
	reply.ip.version = 4;
	reply.ip.ihl = 5;
	reply.ip.tot_len = bpf_htons(sizeof(reply));
	reply.ip.ttl = 64;
	reply.ip.protocol = IPPROTO_ICMP;
	reply.ip.saddr = reply.orig_ip.daddr;
	reply.ip.daddr = reply.orig_ip.saddr;
	reply.ip.check = csum_of(&reply.ip, sizeof(reply.ip));
	if (bpf_skb_change_tail(skb, sizeof(eth) + sizeof(reply), 0) ||
	    bpf_skb_store_bytes(skb, sizeof(eth), &reply, sizeof(reply), 0))
		return TC_ACT_SHOT;
	return bounce(skb, &eth);
}

/* Refuses a packet to a frontend with no backend. */
static __always_inline int refuse(struct __sk_buff *skb, const struct l4 *at)
{
	if (at->proto == IPPROTO_TCP)
		return refuse_tcp(skb, at);
	if (at->proto == IPPROTO_UDP)
		return refuse_udp(skb, at);
	return TC_ACT_SHOT;
}

/*
 * A flow's hash for Maglev: the client's address and port, the frontend
 * port and the protocol, not the frontend address, so every node (each
 * reached at its own address) hashes a flow alike.
 */
static __always_inline __u32 flow_hash(const struct lb4_ct_key *key)
{
	__u32 h = key->saddr;

	h ^= ((__u32)key->sport << 16 | key->dport) * 0x9e3779b1;
	h ^= key->proto;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* A new connection to `svc`: choose a backend, a NAT port, remember both ways. */
static __always_inline int ct_create(const struct lb4_ct_key *key,
				     const struct lb4_service *svc,
				     struct lb4_ct *fwd)
{
	struct lb4_backend *backend;
	struct lb4_ct_key reply_key = {};
	struct lb4_ct reply = {};
	__u32 id = 0;
	__u64 now = bpf_ktime_get_ns();
	int i;

	if (svc->flags & LB4_SVC_MAGLEV)
		backend = lb4_maglev_backend(key->daddr, key->dport, key->proto,
					     flow_hash(key), &id);
	else
		backend = lb4_select_backend(svc, &id);
	if (!backend)
		return -1;
	reply_key.saddr = backend->address;
	reply_key.daddr = snat_address;
	reply_key.sport = backend->port;
	reply_key.proto = key->proto;
	reply.saddr = key->daddr;
	reply.sport = key->dport;
	reply.daddr = key->saddr;
	reply.dport = key->sport;
	reply.backend_id = id;
	reply.flags = LB4_CT_REPLY;
	reply.created_ns = now;
	if (nat_port_span == 0)
		return -1;
	for (i = 0; i < NAT_PORT_TRIES; i++) {
		__u16 port = nat_port_min + bpf_get_prandom_u32() % nat_port_span;

		reply_key.dport = bpf_htons(port);
		if (bpf_map_update_elem(&lb4_ct, &reply_key, &reply, BPF_NOEXIST) == 0)
			break;
	}
	if (i == NAT_PORT_TRIES)
		return -1;
	fwd->saddr = snat_address;
	fwd->sport = reply_key.dport;
	fwd->daddr = backend->address;
	fwd->dport = backend->port;
	fwd->backend_id = id;
	fwd->created_ns = now;
	if (bpf_map_update_elem(&lb4_ct, key, fwd, BPF_ANY)) {
		bpf_map_delete_elem(&lb4_ct, &reply_key);
		return -1;
	}
	return 0;
}

SEC("tc")
int berth_nodeport(struct __sk_buff *skb)
{
	struct lb4_ct_key key = {};
	struct lb4_ct fwd = {};
	struct lb4_ct *known;
	struct lb4_service *svc;
	struct l4 at = {};

	if (snat_address == 0 || parse(skb, &key, &at))
		return TC_ACT_OK;
	known = bpf_map_lookup_elem(&lb4_ct, &key);
	if (known) {
		fwd = *known;
	} else {
		svc = lb4_lookup_service(key.daddr, key.dport, key.proto);
		if (!svc)
			return TC_ACT_OK;
		if (svc->count == 0)
			return refuse(skb, &at);
		if (ct_create(&key, svc, &fwd))
			return TC_ACT_SHOT;
	}
	if (rewrite(skb, &at, &key, &fwd))
		return TC_ACT_SHOT;
	return forward(skb, fwd.saddr, fwd.daddr);
}

SEC("tc")
int berth_nodeport_reply(struct __sk_buff *skb)
{
	struct lb4_ct_key key = {};
	struct lb4_ct back;
	struct lb4_ct *known;
	struct l4 at = {};

	if (snat_address == 0 || parse(skb, &key, &at) || key.daddr != snat_address)
		return TC_ACT_OK;
	known = bpf_map_lookup_elem(&lb4_ct, &key);
	if (!known)
		return TC_ACT_OK;
	back = *known;
	if (rewrite(skb, &at, &key, &back))
		return TC_ACT_SHOT;
	return forward(skb, back.saddr, back.daddr);
}
