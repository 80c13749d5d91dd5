package esbackfill.restroot;

import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.RestHandler;

import java.util.Collection;
import java.util.List;

/**
 * The version-independent half of the plugin: it keeps the node's ClusterService for {@link RestMainAction}.
 * The concrete {@code RestRootPlugin} (src/es8 or src/es9) only registers the handler, because
 * {@code ActionPlugin.getRestHandlers}'s signature changed between 8.19 and 9.x.
 */
abstract class RestRootPluginBase extends Plugin implements ActionPlugin {

    private volatile ClusterService clusterService;

    @Override
    public Collection<?> createComponents(PluginServices services) {
        clusterService = services.clusterService();
        return List.of();
    }

    protected final Collection<RestHandler> restHandlers() {
        return List.of(new RestMainAction(() -> clusterService));
    }
}
