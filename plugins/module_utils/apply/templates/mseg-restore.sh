#!/bin/sh
# Written by mseg.fleet nft_apply from plugins/module_utils/apply/templates/mseg-restore.sh; run by {unit} at
# boot. Do not edit: the next apply rewrites it.
# Loads {ruleset}, the judged JSON form of table {table} that nft_apply wrote (no text is parsed at
# boot), after verifying its sha256 header and nft -j -c.
# Fails closed: a missing header, a checksum mismatch or a file nft rejects is NOT loaded; the
# fail-closed table below is loaded instead (input: drop everything except loopback, established
# and related flows, ICMPv6 neighbour discovery and new SSH connections on port(s) {ssh_ports};
# output: accept) and the reason goes to the journal. Repair by re-running the apply.
set -u
file={ruleset}
nft={nft}
fail() {{
    echo "mseg-restore: $1; loading the fail-closed table (only SSH on {ssh_ports} is let in)" >&2
    "$nft" -f - <<'EOF'
table {table} {{}}
delete table {table}
table {table} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} accept
        tcp dport {{ {ssh_ports} }} accept
        counter name "{failsafe}" comment "mseg fail-closed: persisted ruleset rejected"
    }}
    counter {failsafe} {{
    }}
}}
EOF
    exit 1
}}
[ -r "$file" ] || fail "$file is missing or unreadable"
want=$(head -n 1 "$file" | sed -n 's/^{header}//p')
have=$(tail -n +2 "$file" | sha256sum | cut -d' ' -f1)
[ -n "$want" ] || fail "$file has no sha256 header (corrupt)"
[ "$want" = "$have" ] || fail "$file is corrupt (sha256 $have, expected $want)"
err=$(tail -n +2 "$file" | "$nft" -j -c -f - 2>&1) || fail "nft rejects $file: $err"
tail -n +2 "$file" | "$nft" -j -f - || fail "nft failed to load $file"
echo "mseg-restore: loaded $file (sha256 $want)"
