SUMMARY = "Edge gateway forwarding medical device data to the cloud with PHI stripped"
DESCRIPTION = "wardgate receives HL7 v2 over MLLP from patient monitors on an \
               isolated hospital network, removes protected health information \
               before anything is written to disk, spools records durably in \
               SQLite and forwards them over MQTT with mutual TLS."
# The project has no public site yet (Cargo.toml names example.invalid too); set the
# real one when there is one, and drop this suppression.
# nooelint: oelint.vars.homepageping
HOMEPAGE = "https://example.invalid/wardgate"
SECTION = "net"
CVE_PRODUCT = "wardgate"
# The workspace has no licence text file; its Cargo.toml declares the licence in one
# line (workspace.package.license), which is what this checksum covers. The crates
# linked statically into the binary carry their own (permissive) licences.
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=11;endline=11;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The wardgate source tree. A site or CI points these at its own mirror, e.g. in
# local.conf:
#   WARDGATE_GIT_URI = "git://git.hospital.example/wardgate.git;protocol=https;branch=main"
#   SRCREV:pn-wardgate = "<40-hex commit>"
# The commit must carry the Cargo.lock wardgate-crates.inc was generated from: build
# the commit this layer was taken from (tests/run keeps the two in step in every
# commit). The SRCREV below is only the commit the layer was written against (same
# Cargo.lock), so that the recipe parses; it goes stale when Cargo.lock changes.
WARDGATE_GIT_URI ??= "git://git.example.invalid/wardgate.git;protocol=https;branch=main"
PV = "0.1.0+git"
SRC_URI = "${WARDGATE_GIT_URI}"
SRCREV = "5d29fa665117fdcdfc84953ac874273f2cf5d963"
S = "${WORKDIR}/git"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd features_check

# Type=notify, the watchdog and LoadCredential= in wardgate.service need systemd.
REQUIRED_DISTRO_FEATURES = "systemd"

# Build the `wardgate` package (workspace member gateway/) against the workspace's
# Cargo.lock; cargo.bbclass passes --frozen, so nothing is fetched after do_fetch.
CARGO_SRC_DIR = "gateway"
# The lock file sits at the workspace root, not next to gateway/Cargo.toml; the
# update_crates task reads it from here.
CARGO_LOCK_PATH = "${S}/Cargo.lock"
CARGO_LOCK_SRC_DIR = "${S}"

# Device adapters are cargo features of wardgate-device-adapters, selected with
# PACKAGECONFIG (e.g. PACKAGECONFIG:pn-wardgate in local.conf or the distro config):
# every flag becomes `--features wardgate-device-adapters/<flag>`. Today the only
# adapter is hl7, and the daemon always runs its HL7 listener, so a PACKAGECONFIG
# without hl7 stops the build with a message instead of silently building it anyway.
# DICOM and Modbus become flags here once they exist as cargo features.
PACKAGECONFIG ??= "hl7"
PACKAGECONFIG[hl7] = ""
CARGO_BUILD_FLAGS:append = " --features ${@wardgate_cargo_features(d)}"

def wardgate_cargo_features(d):
    adapters = (d.getVar('PACKAGECONFIG') or '').split()
    if 'hl7' not in adapters:
        bb.fatal("wardgate: PACKAGECONFIG must contain hl7 (the daemon always runs the HL7 listener)")
    return ','.join('wardgate-device-adapters/' + a for a in adapters)

# The service user. Created at build time by useradd (not by systemd-sysusers at boot),
# so /etc/passwd is complete in a read-only rootfs and useradd-staticids can pin the
# uid: the spool and pseudonym key in /var/lib/wardgate must keep their owner across
# updates and restores. Same user as systemd/wardgate.sysusers, which is therefore not
# installed.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/wardgate --no-create-home --shell ${base_sbindir}/nologin wardgate"

SYSTEMD_SERVICE:${PN} = "wardgate.service"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/wardgate.service ${D}${systemd_system_unitdir}/wardgate.service

    # tmpfiles.d is read from /usr/lib, also on multilib (so not ${libdir}).
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/wardgate.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/wardgate.conf

    # /etc/wardgate as the tmpfiles entry declares it: root:wardgate 0750. The service
    # reads wardgate.toml through the group; certificates and the key are provisioned
    # per device, not shipped.
    install -d -m 0750 -o root -g wardgate ${D}${sysconfdir}/wardgate
    install -m 0640 -o root -g wardgate ${S}/gateway/examples/wardgate.toml ${D}${sysconfdir}/wardgate/wardgate.toml

    # The unit's Documentation= points here.
    install -d ${D}${docdir}/wardgate
    install -m 0644 ${S}/README.md ${D}${docdir}/wardgate/README.md
}

FILES:${PN} += "${systemd_system_unitdir}/wardgate.service \
                ${nonarch_libdir}/tmpfiles.d/wardgate.conf \
                ${sysconfdir}/wardgate"
CONFFILES:${PN} = "${sysconfdir}/wardgate/wardgate.toml"
