import KilnCustomizers
import KilnFetch
import KilnTemplate

extension DownloadCache {
    /// What `loaded` downloads: every scriptUri and sourceUri of its customizers and in-VM validations.
    public static func downloads(of loaded: LoadedTemplate) -> [TemplateDownload] {
        let customize = zip(loaded.stepPaths.customize, loaded.template.properties.customize)
        let validations = zip(loaded.stepPaths.inVMValidations, loaded.template.properties.validate?.inVMValidations ?? [])
        return (Array(customize) + Array(validations)).flatMap { path, step in
            StepRunner.uris(of: step).map { TemplateDownload(path: "\(path).\($0.property)", uri: $0.uri, sha256Checksum: $0.checksum) }
        }
    }
}
