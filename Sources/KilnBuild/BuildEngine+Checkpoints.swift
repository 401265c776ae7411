import Foundation
import KilnCustomizers
import KilnGuest
import KilnMachine
import KilnStore
import KilnSupport

/// The build's checkpoints: resuming the longest matching chain, and a checkpoint after boot and after each
/// customizer (an external snapshot; the guest runs on in the next checkpoint's folder).
extension BuildEngine {
    /// Resumes the longest chain of checkpoints the cache holds for `keys`. A checkpoint that does not resume is
    /// removed with a notice and the one before is tried. nil: nothing to resume, boot.
    func resumeFromCache(_ cache: CheckpointCache, keys: [String], within: Set<String>?, options: MachineOptions, steps: [BuildPlan.PlannedStep],
                         log: CustomizationLog) async -> (position: Int, entry: CheckpointEntry, machine: BuildMachine, session: any GuestSession)? {
        var position = keys.count - 1
        while position >= 0 {
            defer { position -= 1 }
            guard let entry = cache.lookup(keys[position], within: within) else { continue }
            let chain = cache.chain(of: entry)
            var chainHolds = chain.compactMap { cache.hold($0) }
            // A remote checkpoint's memory image is on its host: looked for when it resumes.
            guard chainHolds.count == chain.count, entry.machine.remote != nil || FileManager.default.fileExists(atPath: entry.machine.memoryPath) else { continue }
            enterPhase(.building, "resume")
            let note = "resuming from checkpoint \(entry.shortKey) (\(entry.stepDescription), run \(entry.runID), \(entry.createdAt.formatted(.iso8601)))"
            log.write("kiln", note)
            events(.message(note))
            var options = options
            options.overlayPath = position + 1 < keys.count ? beginCheckpoint(cache, key: keys[position + 1]) : nil
            do {
                let machine = try await BuildMachine.resume(options, from: entry.machine) { [events] message in
                    log.write("kiln", message)
                    events(.message(message))
                }
                self.machine = machine
                let session: any GuestSession
                do {
                    // The guest's sshd is already running: it answers at once, or the checkpoint is no good.
                    session = try await machine.waitForGuest(timeout: .seconds(120))
                    try await setGuestClock(session)
                } catch {
                    self.machine = nil
                    await machine.teardown(keepFiles: false)
                    throw error
                }
                holds += chainHolds
                for member in chain { cache.touch(member) }
                let reused = steps.prefix(position).map(\.label)
                record.resumedFrom = "\(entry.shortKey) \(entry.stepDescription) (run \(entry.runID))"
                record.checkpoints = chain.reversed().map(\.folder)
                record.reusedSteps = reused
                for (index, label) in reused.enumerated() {
                    log.write(label, "reused from the build cache")
                    events(.customizerFinished(index: index, name: label, seconds: 0, outcome: "reused"))
                }
                persist()
                return (position, entry, machine, session)
            } catch {
                abandonPending()
                if let kiln = error as? KilnError, kiln.code == .cancelled || Task.isCancelled { return nil }
                if let kiln = error as? KilnError, kiln.hasCode(.alreadyExists) {
                    // Another build on the same libvirt daemon runs this chain's guest right now: not a broken
                    // checkpoint, and its ancestors share the guest's name.
                    let notice = "checkpoint \(entry.shortKey) is in use by another build on \(request.libvirtURI ?? "this driver"); booting instead"
                    log.write("kiln", notice)
                    events(.warning(notice))
                    return nil
                }
                let notice = "checkpoint \(entry.shortKey) (\(entry.stepDescription)) did not resume and is discarded: \(error)"
                log.write("kiln", notice)
                events(.warning(notice))
                chainHolds.removeAll()
                await forgetRemoteVolumes(of: cache.remove(entry).removed)
            }
        }
        return nil
    }


    /// Deletes the volumes on their hosts of checkpoints the cache removed (notices go to the build's log).
    func forgetRemoteVolumes(of removed: [CheckpointEntry]) async {
        let log = self.log, events = self.events
        await RemoteCheckpointFiles.delete(removed.map(\.machine)) { notice in
            log?.write("kiln", notice)
            events(.warning(notice))
        }
    }

    /// Creates the folder for checkpoint `key` and returns the overlay path in it; nil (the run directory) when
    /// checkpoints are off or the folder cannot be made.
    func beginCheckpoint(_ cache: CheckpointCache, key: String) -> String? {
        guard checkpointsEnabled else { return nil }
        do {
            let folder = try cache.begin(key: key, runID: record.runID)
            pending = folder
            return folder.folder + "/disk.qcow2"
        } catch {
            disableCheckpoints(after: error)
            return nil
        }
    }

    func abandonPending() {
        pending?.abandon()
        pending = nil
    }

    func disableCheckpoints(after error: any Error) {
        guard checkpointsEnabled else { return }
        checkpointsEnabled = false
        let warning = "cannot write a checkpoint, the build goes on without them: \(error)"
        log?.write("kiln", warning)
        events(.warning(warning))
    }

    /// Completes the checkpoint whose folder holds the guest's overlay: an external snapshot writes the memory and
    /// turns the overlay into the checkpoint's layer; the guest runs on in the next checkpoint's folder (or the run
    /// directory after the last). nil when checkpoints are off, or when this one failed with the guest still
    /// running (the build goes on without checkpoints).
    func takeCheckpoint(_ cache: CheckpointCache, key: String, nextKey: String?, parent: CheckpointEntry?, step: Int?, label: String,
                                machine: BuildMachine, connection: GuestConnection, templateName: String) async throws -> CheckpointEntry? {
        guard checkpointsEnabled, let current = pending else { return nil }
        let clock = ContinuousClock()
        let start = clock.now
        let next: PendingCheckpoint?
        if let nextKey {
            do {
                next = try cache.begin(key: nextKey, runID: record.runID)
            } catch {
                disableCheckpoints(after: error)
                return nil
            }
        } else {
            next = nil
        }
        // What the step wrote goes to its own layer, not to whichever layer the guest's writeback reaches later.
        _ = try? await connection.session.exec("sync")
        let frozen: MachineCheckpoint
        do {
            frozen = try await machine.snapshot(nextOverlay: next.map { $0.folder + "/disk.qcow2" } ?? runDirectory + "/disk.qcow2",
                                                root: parent?.machine)
        } catch {
            next?.abandon()
            guard await machine.isRunning() else { throw error }
            disableCheckpoints(after: error)
            return nil
        }
        let now = Date()
        let entry = CheckpointEntry(key: key, parentKey: parent?.key, parentFolder: parent?.folder, step: step, label: label,
                                    templateName: templateName, runID: record.runID, createdAt: now, lastUsedAt: now, machine: frozen)
        try cache.commit(entry)
        holds.append(current.hold)
        record.checkpoints = (record.checkpoints ?? []) + [entry.folder]
        persist()
        pending = next
        try await setGuestClock(connection.session)
        let note = "checkpoint \(entry.shortKey) \(entry.stepDescription): \(ByteSize.format(cache.sizeBytes(entry))) in \(DurationText.format(clock.now - start))"
        log?.write("kiln", note)
        events(.message(note))
        return entry
    }

    /// A resumed guest's clock stands where it was saved, and a snapshot pauses the guest: set it to the host's.
    func setGuestClock(_ session: any GuestSession) async throws {
        _ = try await session.exec("sudo -n date -u -s @\(Int(Date().timeIntervalSince1970)) >/dev/null 2>&1 || true")
    }
}
