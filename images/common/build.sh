#!/usr/bin/env bash
# Builds one reference source image (called by scripts/build-image, which does
# caching, locking and the manifest).
#
#   images/common/build.sh RECIPE_DIR WORK_DIR OUTPUT_QCOW2
#
# 1. mmdebstrap (minbase + images/common/packages + recipe packages) into a
#    directory, with the overlays and images/common/setup-chroot.sh applied;
# 2. the root filesystem is made with `mkfs.ext4 -d` (and the ESP with
#    mkfs.vfat + mcopy), then placed with dd into a partitioned raw file
#    (sfdisk) -- no loop devices, no mounts, no libguestfs;
# 3. GRUB: BIOS -> boot.img into the MBR, core.img into the gap before
#    partition 1; UEFI -> EFI/BOOT/BOOTX64.EFI on the ESP;
# 4. qemu-img convert to a qcow2 (not compressed: every build reads the base,
#    under TCG and when exporting the VHD, and zlib clusters cost more CPU than
#    the ~550 MB they save).
# Progress goes to stderr. Must run as root (mmdebstrap root mode: chroot).
set -euo pipefail
umask 022

recipe_dir=$(cd "$1" && pwd)
work=$2
out=$3
common=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "build-image: [$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "build-image: error: $*" >&2; exit 1; }

# shellcheck source=../debian-12/recipe.conf
. "$recipe_dir/recipe.conf"
: "${FIRMWARE:?}" "${PARTITION_TABLE:?}" "${SUITE:?}" "${DISK_SIZE_MIB:?}"
ESP_SIZE_MIB=${ESP_SIZE_MIB:-0}

mirror=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${KILN_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

packages=$(sed -e 's/#.*//' "$common/packages" | xargs)
packages="$packages ${RECIPE_PACKAGES:-}"
for excluded in ${RECIPE_EXCLUDE_PACKAGES:-}; do
  packages=$(echo " $packages " | sed "s/ $excluded / /g")
done
include=$(echo $packages | tr ' ' ',')

root_uuid=$(cat /proc/sys/kernel/random/uuid)
esp_volid=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr a-f A-F)
esp_uuid="${esp_volid:0:4}-${esp_volid:4:4}"

rootfs=$work/rootfs
mkdir -p "$work"

# Hook commands are run by mmdebstrap with "$1" = the image root. The --aptopt
# and --dpkgopt settings only apply to the build: the last hook removes the
# files mmdebstrap stores them in, so the image has stock apt/dpkg behaviour.
export KILN_COMMON=$common KILN_WORK=$work KILN_RECIPE=$recipe_dir
{
  echo "# <file system> <mount point> <type> <options> <dump> <pass>"
  echo "UUID=$root_uuid / ext4 rw,discard,errors=remount-ro 0 1"
  if [ "$FIRMWARE" = uefi ]; then
    echo "UUID=$esp_uuid /boot/efi vfat umask=0077 0 1"
  fi
} > "$work/fstab"
cat > "$work/kiln-build.env" <<EOF
FIRMWARE=$FIRMWARE
PARTITION_TABLE=$PARTITION_TABLE
ROOT_UUID=$root_uuid
ESP_UUID=$esp_uuid
NETWORK=${RECIPE_NETWORK:-systemd-networkd}
EOF

log "mmdebstrap $SUITE ($FIRMWARE): $packages"
mmdebstrap \
  --mode=root --format=directory --variant=minbase \
  --include="$include" \
  --aptopt='Acquire::Languages "none"' \
  --aptopt='APT::Install-Recommends "false"' \
  --aptopt='APT::Sandbox::User "root"' \
  --dpkgopt=force-unsafe-io \
  --essential-hook='chroot "$1" debconf-set-selections < "$KILN_COMMON/debconf-selections"' \
  --essential-hook='cp -rT --no-preserve=ownership "$KILN_COMMON/overlay-early" "$1"' \
  --essential-hook='cp "$KILN_WORK/fstab" "$1/etc/fstab"' \
  --customize-hook='cp -rT --no-preserve=ownership "$KILN_COMMON/overlay" "$1"' \
  --customize-hook='[ ! -d "$KILN_RECIPE/overlay" ] || cp -rT --no-preserve=ownership "$KILN_RECIPE/overlay" "$1"' \
  --customize-hook='cp "$KILN_WORK/kiln-build.env" "$1/tmp/kiln-build.env"' \
  --customize-hook='cp "$KILN_COMMON/setup-chroot.sh" "$1/tmp/kiln-setup-chroot.sh"' \
  --customize-hook='chroot "$1" /bin/bash /tmp/kiln-setup-chroot.sh' \
  --customize-hook='rm -f "$1/tmp/kiln-build.env" "$1/tmp/kiln-setup-chroot.sh"' \
  --customize-hook='rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"' \
  "$SUITE" "$rootfs" \
  "deb $mirror $SUITE main" \
  "deb $mirror $SUITE-updates main" \
  "deb $security_mirror $SUITE-security main" >&2

# mmdebstrap empties /etc/machine-id; make sure (systemd generates one per boot
# and commits it, without first-boot preset semantics for an empty file).
: > "$rootfs/etc/machine-id"
[ -z "$(ls "$rootfs"/etc/ssh/ssh_host_* 2>/dev/null)" ] || die "SSH host keys left in the image"
log "root filesystem: $(du -sh --one-file-system "$rootfs" | cut -f1)"

# ------------------------------------------------------------ partitioning
disk=$work/disk.raw
total_sectors=$((DISK_SIZE_MIB * 2048))
rm -f "$disk"
truncate -s $((DISK_SIZE_MIB * 1024 * 1024)) "$disk"
case "$PARTITION_TABLE" in
  dos)
    sfdisk --quiet --no-reread --no-tell-kernel "$disk" >&2 <<EOF
label: dos
unit: sectors
${disk}1 : start=2048, type=83, bootable
EOF
    ;;
  gpt)
    [ "$ESP_SIZE_MIB" -gt 0 ] || die "gpt recipe without ESP_SIZE_MIB"
    # Debian cloud layout: ESP is partition 15 (first on disk), root is
    # partition 1 and last on disk so growpart can extend it.
    sfdisk --quiet --no-reread --no-tell-kernel "$disk" >&2 <<EOF
label: gpt
unit: sectors
${disk}15 : start=2048, size=$((ESP_SIZE_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System Partition"
${disk}1 : start=$(((ESP_SIZE_MIB + 1) * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="Linux root"
EOF
    ;;
  *) die "unknown PARTITION_TABLE $PARTITION_TABLE" ;;
esac
# "<disk>1 : start=  2048, size= 8386560, type=83, bootable"
part_field() { # partition-number field
  sfdisk -d "$disk" | sed -n "s|^${disk}$1 :.*$2= *\([0-9]*\).*|\1|p"
}
root_start=$(part_field 1 start)
root_size=$(part_field 1 size)
[ -n "$root_start" ] && [ -n "$root_size" ] || die "cannot read the partition table back"
[ $((root_start % 2048)) -eq 0 ] || die "root partition not MiB-aligned"
log "root partition: start sector $root_start, $root_size sectors"

# ------------------------------------------------------------ ESP (UEFI)
if [ "$FIRMWARE" = uefi ]; then
  esp_start=$(part_field 15 start)
  esp_size=$(part_field 15 size)
  esp=$work/esp.img
  rm -f "$esp"
  mkfs.vfat -F 32 -n EFI -i "$esp_volid" -C "$esp" $((esp_size / 2)) >&2
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$esp" "$rootfs/boot/efi/EFI" ::/
  MTOOLS_SKIP_CHECK=1 mdir -/ -i "$esp" ::/ >&2
  dd if="$esp" of="$disk" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
  rm -f "$esp"
  # /boot/efi is only the mount point inside the root filesystem
  rm -rf "${rootfs:?}/boot/efi/"*
fi

# ------------------------------------------------------------ root filesystem
rootimg=$work/root.ext4
rm -f "$rootimg"
truncate -s $((root_size / 8 * 4096)) "$rootimg"
log "mkfs.ext4 -d (UUID $root_uuid)"
# GRUB 2.06 cannot read orphan_file / metadata_csum_seed: keep them off.
mkfs.ext4 -q -F -b 4096 -L root -U "$root_uuid" \
  -O ^orphan_file,^metadata_csum_seed -E lazy_itable_init=0,lazy_journal_init=0 \
  -d "$rootfs" "$rootimg" >&2
e2fsck -f -n "$rootimg" >&2
dd if="$rootimg" of="$disk" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
rm -f "$rootimg"

# ------------------------------------------------------------ boot loader (BIOS)
if [ "$FIRMWARE" = bios ]; then
  core=$rootfs/boot/grub/i386-pc/core.img
  boot=$rootfs/boot/grub/i386-pc/boot.img
  core_bytes=$(stat -c %s "$core")
  [ "$core_bytes" -le $(((root_start - 1) * 512)) ] || die "core.img ($core_bytes bytes) does not fit before partition 1"
  # boot.img code (not the partition table) into the MBR; it loads core.img
  # from sector 1 (its default kernel_sector).
  dd if="$boot" of="$disk" bs=440 count=1 conv=notrunc status=none
  # as grub-bios-setup does for hard disks: NOP the boot-drive check jump
  printf '\x90\x90' | dd of="$disk" bs=1 seek=$((0x66)) count=2 conv=notrunc status=none
  dd if="$core" of="$disk" bs=512 seek=1 conv=notrunc status=none
  log "GRUB i386-pc: boot.img in MBR, core.img ($core_bytes bytes) at sector 1"
fi

sfdisk -l "$disk" >&2

# ------------------------------------------------------------ qcow2
log "qemu-img convert -> qcow2"
qemu-img convert -f raw -O qcow2 "$disk" "$out"
rm -f "$disk"
qemu-img check -q "$out"
log "image: $(du -h "$out" | cut -f1) on disk, $(qemu-img info --output=json "$out" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p') bytes virtual"
rm -rf --one-file-system "$rootfs"
