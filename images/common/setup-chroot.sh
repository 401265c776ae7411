#!/bin/bash
# Runs INSIDE the image root (chroot), as the last mmdebstrap customize hook of
# images/common/build.sh, after all packages are installed and the overlay is
# copied in. Configures services, waagent, SSH host keys and the GRUB boot files.
# Input: /tmp/kiln-build.env (FIRMWARE, PARTITION_TABLE, ROOT_UUID, ESP_UUID, NETWORK).
set -euo pipefail
. /tmp/kiln-build.env
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

log() { echo "setup-chroot: $*" >&2; }

# ---------------------------------------------------------------- kernel
kvers=()
for k in /boot/vmlinuz-*; do kvers+=("${k#/boot/vmlinuz-}"); done
[ "${#kvers[@]}" -eq 1 ] || { log "expected one kernel, found: ${kvers[*]}"; exit 1; }
kver=${kvers[0]}
[ -f "/boot/initrd.img-$kver" ] || { log "missing /boot/initrd.img-$kver"; exit 1; }
log "kernel $kver"

# ---------------------------------------------------------------- fstab
# /etc/fstab was written before the packages were installed (so the initramfs
# knows the root filesystem); /boot/efi is the ESP mount point (UEFI).
grep -q "^UUID=$ROOT_UUID / " /etc/fstab
mkdir -p /boot/efi

# ---------------------------------------------------------------- waagent
# Installed (waagent -deprovision+user must work) but inert: cloud-init
# provisions, the daemon is disabled (its unit is also conditioned on Hyper-V).
set_waagent() { # key value
  if grep -q "^#\?\s*$1=" /etc/waagent.conf; then
    sed -i "s|^#\?\s*$1=.*|$1=$2|" /etc/waagent.conf
  else
    echo "$1=$2" >> /etc/waagent.conf
  fi
}
if [ -e /etc/waagent.conf ]; then   # a recipe may leave the agent out (RECIPE_EXCLUDE_PACKAGES)
  set_waagent Provisioning.Agent cloud-init
  set_waagent ResourceDisk.Format n
  set_waagent ResourceDisk.EnableSwap n
  set_waagent AutoUpdate.Enabled n
  test -x /usr/sbin/waagent
fi

# ---------------------------------------------------------------- services
systemctl enable systemd-resolved.service ssh.service ssh-host-keygen.service
# The network: systemd-networkd (Debian's cloud images), or NetworkManager as RHEL's images have it.
case "$NETWORK" in
  systemd-networkd) systemctl enable systemd-networkd.service ;;
  NetworkManager)
    systemctl disable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true
    rm -f /etc/systemd/network/99-default-dhcp.network
    rm -rf /etc/systemd/system/systemd-networkd-wait-online.service.d
    systemctl enable NetworkManager.service NetworkManager-wait-online.service ;;
  *) log "unknown NETWORK $NETWORK"; exit 1 ;;
esac
# Nothing should compete with customization scripts for the dpkg lock, or
# scrub/index at boot under emulation.
for unit in walinuxagent.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer e2scrub_reap.service man-db.timer; do
  if [ -e "/lib/systemd/system/$unit" ] || [ -e "/usr/lib/systemd/system/$unit" ]; then
    systemctl disable "$unit"
  fi
done
# name resolution through systemd-resolved (DNS servers from DHCP)
ln -sfn ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf

# ---------------------------------------------------------------- users, ssh
# No user, no key, no root password; host keys are created at first boot.
passwd -l root >/dev/null
rm -f /etc/ssh/ssh_host_*

# ---------------------------------------------------------------- GRUB
# Equivalent of grub-install + update-grub without needing the target disk:
# the core image embeds a search for the root filesystem UUID; scripts on the
# host write it to the MBR gap (BIOS) or the EFI System Partition (UEFI).
. /etc/default/grub
for f in /etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done
cmdline="root=UUID=$ROOT_UUID ro ${GRUB_CMDLINE_LINUX:-} ${GRUB_CMDLINE_LINUX_DEFAULT:-}"
cmdline=$(echo "$cmdline" | tr -s ' ' | sed 's/ $//')

case "$PARTITION_TABLE" in
  dos) partmod=part_msdos; hint=hd0,msdos1 ;;
  gpt) partmod=part_gpt;   hint=hd0,gpt1 ;;
esac
case "$FIRMWARE" in
  bios) platform=i386-pc ;;
  uefi) platform=x86_64-efi ;;
esac

rm -rf /boot/grub/$platform
mkdir -p /boot/grub/$platform
cp /usr/lib/grub/$platform/*.mod /usr/lib/grub/$platform/*.lst /boot/grub/$platform/
[ -e /usr/lib/grub/$platform/modinfo.sh ] && cp /usr/lib/grub/$platform/modinfo.sh /boot/grub/$platform/
grub-editenv /boot/grub/grubenv create

cat > /tmp/load.cfg <<EOF
search.fs_uuid $ROOT_UUID root $hint
set prefix=(\$root)'/boot/grub'
EOF
if [ "$FIRMWARE" = bios ]; then
  grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -c /tmp/load.cfg \
    -p "($hint)/boot/grub" -o /boot/grub/i386-pc/core.img \
    biosdisk part_msdos ext2 search_fs_uuid
  cp /usr/lib/grub/i386-pc/boot.img /boot/grub/i386-pc/boot.img
else
  grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -c /tmp/load.cfg \
    -p "($hint)/boot/grub" -o /boot/grub/x86_64-efi/core.efi \
    part_gpt part_msdos fat ext2 search_fs_uuid
  rm -rf /boot/efi/EFI
  mkdir -p /boot/efi/EFI/BOOT
  cp /boot/grub/x86_64-efi/core.efi /boot/efi/EFI/BOOT/BOOTX64.EFI
fi
rm -f /tmp/load.cfg

cat > /boot/grub/grub.cfg <<EOF
# Written at image build time by the Kiln image recipe (images/common/setup-chroot.sh)
# from /etc/default/grub and /etc/default/grub.d/*.cfg; update-grub regenerates
# this file when a kernel is installed.
set default=0
set timeout_style=hidden
set timeout=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
insmod $partmod
insmod ext2
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os --id 'gnulinux-simple-$ROOT_UUID' {
	insmod gzio
	insmod $partmod
	insmod ext2
	search --no-floppy --fs-uuid --set=root $ROOT_UUID
	echo	'Loading Linux $kver ...'
	linux	/boot/vmlinuz-$kver $cmdline
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-$kver
}
EOF

# ---------------------------------------------------------------- cleanup
apt-get clean
rm -f /var/lib/dbus/machine-id /var/lib/systemd/random-seed
rm -rf /var/lib/cloud/* /var/log/cloud-init*.log /var/cache/debconf/*-old
find /var/log -type f -name '*.log' -exec truncate -s 0 {} +
log "done"
