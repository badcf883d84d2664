// AI factory wall-time warning: a JupyterLab 4 plugin written by hand in the shape of a prebuilt
// ("federated") extension's container, so that it needs no npm download and no webpack build.
// JupyterLab loads this file, calls init() and then get('./extension'); the plugin imports nothing:
// it uses the application's commands (docmanager:save-all, apputils:notify) and its event stream.
(function () {
  'use strict';
  var NAME = 'aifactory-walltime';
  var SCHEMA_ID = 'https://events.aifactory.example/walltime-warning/v1';
  var STATE_PATH = 'aifactory/walltime';

  var plugin = {
    id: 'aifactory-walltime:plugin',
    description: 'Saves the open notebooks and warns before the session reaches its wall-time limit.',
    autoStart: true,
    activate: function (app) {
      var settings = app.serviceManager.serverSettings;
      var handled = '';  // warned_at of the warning already acted upon: act once per warning

      function act(warning) {
        if (!warning || !warning.warned_at || warning.warned_at === handled) {
          return Promise.resolve();
        }
        handled = warning.warned_at;
        // save first: the notice must not claim what did not happen
        return app.commands.execute('docmanager:save-all')
          .catch(function (error) { console.error('aifactory: saving before the wall-time limit failed', error); })
          .then(function () {
            return app.commands.execute('apputils:notify', {
              message: warning.message,
              type: 'warning',
              options: { autoClose: false }
            });
          });
      }

      // a warning that came while this page was not connected (opened later, tab in the background)
      function check() {
        var headers = {};
        if (settings.token) {
          headers.Authorization = 'token ' + settings.token;
        }
        return fetch(settings.baseUrl + STATE_PATH, { credentials: 'same-origin', headers: headers })
          .then(function (response) { return response.ok ? response.json() : {}; })
          .then(act)
          .catch(function (error) { console.warn('aifactory: cannot read the wall-time state', error); });
      }

      if (app.serviceManager.events) {
        app.serviceManager.events.stream.connect(function (_, event) {
          if (event && event.schema_id === SCHEMA_ID) {
            act(event);
          }
        });
      }
      document.addEventListener('visibilitychange', function () {
        if (document.visibilityState === 'visible') {
          check();
        }
      });
      app.restored.then(check);
    }
  };

  var container = {
    init: function () { return Promise.resolve(); },
    get: function (module) {
      if (module !== './extension') {
        return Promise.reject(new Error(NAME + ' has no module ' + module));
      }
      return Promise.resolve(function () { return { __esModule: true, default: plugin }; });
    }
  };
  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = container;
})();
